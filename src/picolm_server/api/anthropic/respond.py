"""What the core reports, as Anthropic's answers: a whole :class:`Message`, or the
events of a started stream (written by :class:`~.events.MessageStream`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...errors import APIError
from ...generation import EventStream, Finish, Reply, TextDelta, ToolCallArguments, ToolCallStart
from .events import MessageStream
from .reply import Call, message
from .types import Message, Usage


def reply_message(reply: Reply, model: str) -> Message:
    usage = reply.usage
    return message(
        model=model,
        text=reply.text,
        calls=[Call(call.name, call.arguments) for call in reply.tool_calls],
        finish=reply.finish_reason,
        stop_sequence=reply.stop_sequence,
        usage=Usage.of(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens),
    )


async def message_events(
    stream: EventStream, model: str, request_id: str | None = None
) -> AsyncIterator[bytes]:
    """The SSE events of a started stream; closes it when done (or abandoned)."""
    writer = MessageStream(model)
    async with stream:
        yield writer.start(stream.prompt_tokens, stream.cached_tokens)
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    yield writer.text(event.text)
                elif isinstance(event, ToolCallStart):
                    yield writer.tool_use(event.name)
                elif isinstance(event, ToolCallArguments):
                    yield writer.tool_input(event.fragment)
                elif isinstance(event, Finish):
                    tokens = event.usage.completion_tokens
                    yield writer.finish(event.reason, event.stop_sequence, tokens)
        except APIError as exc:
            # The 200 and earlier events are already sent: report in-band, then end.
            yield writer.error(exc, request_id)
