"""Ollama's request and response shapes, as its ``docs/api.md`` and its official
clients' types declare them.

Requests accept fields this server does not know (Ollama adds some often, and clients
send them); which known ones are refused is decided in :mod:`.convert`. Responses
forbid extra fields, so that a test of a body against these models and the clients'
types catches a misspelled one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests ------------------------------------------------------------------------

# A duration as Ollama takes it: seconds as a number, or a Go duration ("5m", "1h30m",
# "-1"); see convert.keep_alive_seconds.
KeepAlive = float | str | None
# "" and None: free text; "json": any JSON object; an object: that JSON schema.
Format = Literal["", "json"] | dict[str, Any] | None


class Options(_Request):
    """The options this server applies or accepts; others are accepted and ignored."""

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    num_predict: int | None = None
    num_ctx: int | None = Field(default=None, ge=1)
    stop: list[str] | str | None = None
    seed: int | None = None
    repeat_penalty: float | None = None


class CallFunction(_Request):
    name: str
    # An object, as Ollama sends it; a JSON text is taken too (some clients send one).
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class ToolCall(_Request):
    function: CallFunction


class Message(_Request):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class ToolFunction(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Request):
    type: Literal["function"] = "function"
    function: ToolFunction


class _ModelRequest(_Request):
    model: str = ""


class _GenerationRequest(_ModelRequest):
    format: Format = None
    options: Options | None = None
    stream: bool = True
    keep_alive: KeepAlive = None
    think: bool | str | None = None


class ChatRequest(_GenerationRequest):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] | None = None


class GenerateRequest(_GenerationRequest):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


class EmbedRequest(_ModelRequest):
    input: str | list[str] = ""
    truncate: bool = True
    options: Options | None = None
    keep_alive: KeepAlive = None
    dimensions: int | None = None


class EmbeddingsRequest(_ModelRequest):
    prompt: str = ""
    options: Options | None = None
    keep_alive: KeepAlive = None


class ShowRequest(_ModelRequest):
    name: str | None = None  # older clients' field for the model
    verbose: bool = False


# ---- responses -----------------------------------------------------------------------


class Version(_Response):
    version: str


class ModelDetails(_Response):
    parent_model: str = ""
    format: str = "gguf"
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class ListedModel(_Response):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class ModelList(_Response):
    models: list[ListedModel]


class RunningModel(_Response):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int = 0
    context_length: int


class RunningModels(_Response):
    models: list[RunningModel]


class ModelShown(_Response):
    license: str = ""
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class OutCallFunction(_Response):
    name: str
    arguments: dict[str, Any]


class OutToolCall(_Response):
    function: OutCallFunction


class OutMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str
    tool_calls: list[OutToolCall] | None = None


class Done(_Response):
    """The counts and measured durations (nanoseconds) of a finished generation."""

    done_reason: str
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


class ChatPart(_Response):
    """One line of a chat stream (or the whole reply): ``done`` and its counts last."""

    model: str
    created_at: str
    message: OutMessage
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class GeneratePart(_Response):
    model: str
    created_at: str
    response: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class Embedded(_Response):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class LegacyEmbedding(_Response):
    embedding: list[float]
