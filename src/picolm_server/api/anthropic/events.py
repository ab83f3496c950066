"""Anthropic's message stream: server-sent events with an ``event:`` line naming each
one, in Anthropic's order.

``message_start`` (usage with the input tokens), then each content block as
``content_block_start``, ``content_block_delta`` (``text_delta`` or
``input_json_delta``) and ``content_block_stop``, with one ``ping`` after the first
block's start; then ``message_delta`` (stop reason, output tokens) and
``message_stop``. An error after the stream began is an ``error`` event, and the stream
ends there. :class:`MessageStream` is pure: it turns what the generation reports into
the bytes to send.
"""

from __future__ import annotations

import json
from typing import Literal

from ...errors import APIError
from ...http.errors import anthropic_body
from ...http.sse import named_event
from .reply import CoreFinish, message_id, stop_reason, tool_use_id
from .types import (
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    DeltaUsage,
    Message,
    MessageDelta,
    MessageDeltaEvent,
    MessageStartEvent,
    MessageStopEvent,
    PingEvent,
    StreamEvent,
    TextBlock,
    ToolUseBlock,
    Usage,
)


def sse(event: StreamEvent) -> bytes:
    """One event as Anthropic sends it: ``event: <type>`` then its JSON ``data:``."""
    return named_event(event.type, event.model_dump_json())


def _delta_event(index: int, delta: str) -> bytes:
    # Written directly: one per token, where building a pydantic event costs more than
    # the token's own handling on a small machine. Tests check it against the SDK types.
    data = f'{{"type":"content_block_delta","index":{index},"delta":{delta}}}'
    return named_event("content_block_delta", data)


class MessageStream:
    """The events of one streamed message, block by block.

    Call :meth:`start`, then :meth:`text`, :meth:`tool_use` and :meth:`tool_input` as the
    reply comes, then :meth:`finish` (or :meth:`error`). Each returns the bytes to send.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = message_id()
        self._index = -1
        self._open: Literal["text", "tool_use"] | None = None
        self._pinged = False

    def start(self, prompt_tokens: int, cached_tokens: int) -> bytes:
        usage = Usage.of(prompt_tokens, 0, cached_tokens)
        started = Message(id=self.id, content=[], model=self.model, stop_reason=None, usage=usage)
        return sse(MessageStartEvent(message=started))

    def _open_block(self, block: TextBlock | ToolUseBlock) -> bytes:
        events = self._close_block()
        self._index += 1
        self._open = block.type
        events += sse(ContentBlockStartEvent(index=self._index, content_block=block))
        if not self._pinged:
            self._pinged = True
            events += sse(PingEvent())
        return events

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return sse(ContentBlockStopEvent(index=self._index))

    def text(self, piece: str) -> bytes:
        if not piece:
            return b""
        events = self._open_block(TextBlock(text="")) if self._open != "text" else b""
        delta = f'{{"type":"text_delta","text":{json.dumps(piece, ensure_ascii=False)}}}'
        return events + _delta_event(self._index, delta)

    def tool_use(self, name: str) -> bytes:
        """A new tool_use block (``input`` comes in pieces with :meth:`tool_input`)."""
        return self._open_block(ToolUseBlock(id=tool_use_id(), name=name, input={}))

    def tool_input(self, fragment: str) -> bytes:
        delta = json.dumps({"type": "input_json_delta", "partial_json": fragment})
        return _delta_event(self._index, delta)

    def finish(self, finish: CoreFinish, stop_sequence: str | None, output_tokens: int) -> bytes:
        delta = MessageDelta(
            stop_reason=stop_reason(finish, stop_sequence), stop_sequence=stop_sequence
        )
        return (
            self._close_block()
            + sse(MessageDeltaEvent(delta=delta, usage=DeltaUsage(output_tokens=output_tokens)))
            + sse(MessageStopEvent())
        )

    def error(self, error: APIError, request_id: str | None = None) -> bytes:
        """The ``error`` event, in the envelope of the API's error answers."""
        return named_event("error", json.dumps(anthropic_body(error, request_id)))
