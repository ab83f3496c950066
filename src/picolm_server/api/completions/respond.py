"""``/v1/completions`` out: core replies and events as ``text_completion`` objects and
server-sent events (the same shape streamed or not), exactly as OpenAI's."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator

from ...errors import APIError
from ...generation import EventStream, Finish, TextDelta, Usage
from ...generation.drain import ends_stream_with_done
from ...http.errors import openai_body
from ...http.sse import DONE_EVENT, sse_event
from ..chat.types import Usage as WireUsage
from .types import Completion, CompletionChoice, CompletionFinishReason

SYSTEM_FINGERPRINT = "fp_picolm_server"


def completion_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


def wire_usage(usage: Usage) -> WireUsage:
    return WireUsage.of(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)


def finish_reason(reason: str) -> CompletionFinishReason:
    """The core's reason as a completion's: a raw prompt never makes tool calls."""
    return "length" if reason == "length" else "stop"


def text_completion(
    text: str, reason: CompletionFinishReason, usage: Usage, model: str
) -> Completion:
    return Completion(
        id=completion_id(),
        created=int(time.time()),
        model=model,
        choices=[CompletionChoice(text=text, finish_reason=reason)],
        system_fingerprint=SYSTEM_FINGERPRINT,
        usage=wire_usage(usage),
    )


class ChunkWriter:
    """The SSE events of one streamed completion (one id and creation time)."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = completion_id()
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _event(self, choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        payload = Completion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            system_fingerprint=SYSTEM_FINGERPRINT,
            usage=wire_usage(usage) if usage is not None else None,
        )
        # Only the usage chunk has usage (the spec's usage is an object, never null).
        exclude = None if usage is not None else {"usage"}
        return sse_event(payload.model_dump_json(exclude=exclude))

    def text(self, text: str) -> bytes:
        return self._event([CompletionChoice(text=text, finish_reason=None)])

    def finish(self, reason: CompletionFinishReason) -> bytes:
        return self._event([CompletionChoice(text="", finish_reason=reason)])

    def usage(self, usage: Usage) -> bytes:
        return self._event([], usage)


def finished_events(
    writer: ChunkWriter, echo: str, reason: CompletionFinishReason, usage: Usage
) -> list[bytes]:
    """A whole stream that needs no generation (``max_tokens: 0``)."""
    events = [writer.text(echo)] if echo else []
    events.append(writer.finish(reason))
    if writer.include_usage:
        events.append(writer.usage(usage))
    return [*events, DONE_EVENT]


async def replay(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


async def chunk_events(stream: EventStream, writer: ChunkWriter, echo: str) -> AsyncIterator[bytes]:
    """The SSE events of a started stream (the echoed prompt first); closes the stream
    when done or abandoned."""
    async with stream:
        if echo:
            yield writer.text(echo)
        finish: Finish | None = None
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    if event.text:
                        yield writer.text(event.text)
                elif isinstance(event, Finish):
                    finish = event
        except APIError as exc:
            # The 200 and earlier chunks are already sent: report in-band, then end.
            yield sse_event(json.dumps(openai_body(exc)))
            if ends_stream_with_done(exc):
                yield DONE_EVENT
            return
        assert finish is not None
        yield writer.finish(finish_reason(finish.reason))
        if writer.include_usage:
            yield writer.usage(finish.usage)
        yield DONE_EVENT
