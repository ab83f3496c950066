"""Anthropic Messages API types: requests as clients send them, responses and stream
events exactly as Anthropic shapes them.

Requests are typed strictly (``"max_tokens": "5"`` is refused) but accept fields this
server does not know, as clients send newer ones; which known fields cannot be honoured
is decided in :mod:`.convert`. Content blocks are a union on ``type``: a block of any
other type (an image, a document, thinking) is refused naming its type.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ---- request --------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class TextBlockParam(_Request):
    type: Literal["text"]
    text: str


class ToolUseBlockParam(_Request):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlockParam(_Request):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlockParam] | None = None
    is_error: bool | None = None


InputBlock = Annotated[
    TextBlockParam | ToolUseBlockParam | ToolResultBlockParam, Field(discriminator="type")
]
SUPPORTED_BLOCK_TYPES = ("text", "tool_use", "tool_result")


class MessageParam(_Request):
    # "system" mid-conversation: an instruction between turns (Claude Code sends them).
    role: Literal["user", "assistant", "system"]
    content: str | list[InputBlock]


class ToolParam(_Request):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    # Optional here so that a server tool (``{"type": "web_search_20250305", ...}``) is
    # refused by name rather than for lacking a schema; a custom tool must have one.
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoiceAuto(_Request):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Request):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(_Request):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Request):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
    Field(discriminator="type"),
]


class CountTokensRequest(_Request):
    """What ``/v1/messages/count_tokens`` takes: the prompt's part of a request."""

    model: str = ""  # left out: the server's default model
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None


# ---- responses ------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextBlock(_Response):
    type: Literal["text"] = "text"
    text: str
    citations: None = None


class ToolUseBlock(_Response):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = TextBlock | ToolUseBlock
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class Usage(_Response):
    # input_tokens excludes what was read from the prompt cache (Anthropic counts a
    # prompt as input + cache_creation + cache_read).
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, output_tokens: int, cached_tokens: int = 0) -> Usage:
        return cls(
            input_tokens=prompt_tokens - cached_tokens,
            output_tokens=output_tokens,
            cache_read_input_tokens=cached_tokens,
        )


class Message(_Response):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[ContentBlock]
    model: str
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage


class TokensCount(_Response):
    input_tokens: int


# ---- stream events --------------------------------------------------------------------


class MessageStartEvent(_Response):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStartEvent(_Response):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class PingEvent(_Response):
    type: Literal["ping"] = "ping"


class TextDelta(_Response):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJSONDelta(_Response):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ContentBlockDeltaEvent(_Response):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: TextDelta | InputJSONDelta


class ContentBlockStopEvent(_Response):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDelta(_Response):
    stop_reason: StopReason
    stop_sequence: str | None = None


class DeltaUsage(_Response):
    output_tokens: int


class MessageDeltaEvent(_Response):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDelta
    usage: DeltaUsage


class MessageStopEvent(_Response):
    type: Literal["message_stop"] = "message_stop"


StreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | PingEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
)
