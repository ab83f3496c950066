"""The ``/v1/completions`` request as clients send it and the ``text_completion``
response exactly as OpenAI shapes it (streamed chunks have the same shape)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..chat.types import Stop, StreamOptions, Usage


class CompletionRequest(BaseModel):
    # Strict like the chat request: "yes" is not a boolean, 1.5 not an integer.
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = ""  # left out: the server's default model
    # A string, a list of strings, a token array or a list of token arrays (OpenAI's
    # four forms); which of them this server runs is decided in convert.py.
    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    suffix: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=128)
    best_of: int | None = Field(default=None, ge=0, le=20)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool | None = False
    stop: Stop = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None


CompletionFinishReason = Literal["stop", "length"]


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompletionChoice(_Response):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: CompletionFinishReason | None


class Completion(_Response):
    """A ``text_completion``: the whole reply, or one streamed chunk of it (in a chunk
    ``finish_reason`` is null until the last one, as OpenAI streams them, and ``usage``
    is only in the final usage chunk, whose ``choices`` is empty)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str
    usage: Usage | None = None
