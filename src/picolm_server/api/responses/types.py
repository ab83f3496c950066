"""The Responses API's types: the request as clients send it, and the response object,
its output items and usage exactly as OpenAI shapes them.

Requests accept fields this server does not know, as the chat request does; which known
parameters are refused is decided in :mod:`.convert`. Input items and tools are read
loosely here (a ``type`` and the fields any kind may have) so that an unsupported kind
is refused there with a message naming it, rather than as a union that failed to match.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)


class _Request(BaseModel):
    # Strict, as OpenAI's API is (see protocol._Request).
    model_config = ConfigDict(extra="allow", strict=True)


class _Object(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- request -------------------------------------------------------------------------


class ContentPart(_Request):
    """``input_text`` (``output_text`` and ``refusal`` in an assistant message); the
    other kinds (images, files, audio) are refused by the conversion."""

    type: str
    text: str | None = None
    refusal: str | None = None


class InputItem(_Request):
    """One item of ``input``: a message (``type`` ``message`` or absent), a
    ``function_call`` or a ``function_call_output``; other kinds are refused."""

    type: str | None = None
    id: str | None = None
    role: str | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None
    status: str | None = None


class ToolParam(_Request):
    """A tool; only ``function`` tools can be honoured (built-in tools are refused)."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceObject(_Request):
    """``{"type": "function", "name": ...}``, ``{"type": "allowed_tools", ...}``, or a
    built-in tool's choice (refused)."""

    type: str
    name: str | None = None
    mode: Literal["auto", "required"] | None = None
    tools: list[dict[str, Any]] | None = None


ToolChoiceParam = Literal["none", "auto", "required"] | ToolChoiceObject


class TextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextParam(_Request):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningParam(_Request):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesRequest(_Request):
    model: str = ""  # left out: the server's default model
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stream: bool | None = False
    store: bool | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    reasoning: ReasoningParam | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None


# ---- the response object -------------------------------------------------------------

ItemStatus = Literal["in_progress", "completed", "incomplete"]
ResponseStatus = Literal["completed", "failed", "in_progress", "incomplete"]


class OutputText(_Object):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(_Object):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class FunctionCall(_Object):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


OutputItem = OutputMessage | FunctionCall


class InputTokensDetails(_Object):
    cached_tokens: int = 0
    # What this request's prompt added to a prompt cache; the engines report only reuse.
    cache_write_tokens: int = 0


class OutputTokensDetails(_Object):
    reasoning_tokens: int = 0  # the models served here do not reason apart from the reply


class ResponseUsage(_Object):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> ResponseUsage:
        return cls(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=cached_tokens),
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )


class FunctionToolEcho(_Object):
    type: Literal["function"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None
    strict: bool | None


class FormatText(_Object):
    type: Literal["text"] = "text"


class FormatJSONObject(_Object):
    type: Literal["json_object"] = "json_object"


class FormatJSONSchema(_Object):
    type: Literal["json_schema"] = "json_schema"
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("description") is None:
            data.pop("description", None)  # a string in the spec, never null
        return data


class TextConfig(_Object):
    format: FormatText | FormatJSONObject | FormatJSONSchema = Field(default_factory=FormatText)
    verbosity: Literal["low", "medium", "high"] = "medium"


class NamedFunctionChoice(_Object):
    type: Literal["function"] = "function"
    name: str


class AllowedToolsChoice(_Object):
    type: Literal["allowed_tools"] = "allowed_tools"
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


ToolChoiceEcho = Literal["none", "auto", "required"] | NamedFunctionChoice | AllowedToolsChoice


class IncompleteDetails(_Object):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(_Object):
    code: str
    message: str


class Reasoning(_Object):
    effort: str | None = None
    summary: str | None = None


class ResponseObject(_Object):
    """The response object, as creation returns it and the store keeps it."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: Reasoning = Field(default_factory=Reasoning)
    store: bool = True
    temperature: float
    top_p: float
    text: TextConfig = Field(default_factory=TextConfig)
    tool_choice: ToolChoiceEcho = "auto"
    tools: list[FunctionToolEcho] = Field(default_factory=list)
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    background: bool = False
    service_tier: Literal["default"] = "default"

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The spec has no null for these: absent until known (usage), or not given.
        data: dict[str, Any] = handler(self)
        for key in ("usage", "user"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class DeletedResponse(_Object):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True
