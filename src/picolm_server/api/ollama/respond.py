"""Ollama's replies out: core events as chat and generate objects, whole or as NDJSON
lines (one object a line, the last with ``done: true``, ``done_reason``, the counts and
the durations), and the measured durations themselves.

Durations are measured here, in nanoseconds, on a monotonic clock: ``load_duration``
is the wait for the model's lease (its load when it was not loaded), ``prompt_eval``
runs from then to the first output (the prompt's computation, with any wait for a
slot), ``eval`` from the first output to the end, ``total`` from the request's
acceptance to the end. The counts are the core's usage: the prompt's tokens and the
reply's.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone

from ...errors import APIError
from ...generation import EventStream, Finish, TextDelta, ToolCallDone
from ...http.errors import ollama_body
from .types import ChatPart, Done, GeneratePart, OutCallFunction, OutMessage, OutToolCall


def created_at() -> str:
    """Now, as Ollama writes it (RFC 3339, UTC, ``Z``)."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class Timer:
    """The phases of one request, in nanoseconds since it was accepted."""

    def __init__(self) -> None:
        self.started = time.perf_counter_ns()
        self.loaded = self.started
        self.first: int | None = None

    def mark_loaded(self) -> None:
        self.loaded = time.perf_counter_ns()

    def mark_output(self) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()

    @property
    def load_duration(self) -> int:
        return self.loaded - self.started

    def done(self, finish: Finish) -> Done:
        ended = time.perf_counter_ns()
        first = self.first if self.first is not None else ended
        return Done(
            done_reason="length" if finish.reason == "length" else "stop",
            total_duration=ended - self.started,
            load_duration=self.loaded - self.started,
            prompt_eval_count=finish.usage.prompt_tokens,
            prompt_eval_duration=first - self.loaded,
            eval_count=finish.usage.completion_tokens,
            eval_duration=ended - first,
        )


def _line(part: ChatPart | GeneratePart) -> bytes:
    return part.model_dump_json(exclude_none=True).encode("utf-8") + b"\n"


def error_line(error: APIError) -> bytes:
    """An error after the stream has started: a line of its own, then the end."""
    return json.dumps(ollama_body(error), ensure_ascii=True).encode("ascii") + b"\n"


def out_call(event: ToolCallDone) -> OutToolCall:
    return OutToolCall(
        function=OutCallFunction(name=event.name, arguments=json.loads(event.arguments))
    )


def chat_part(model: str, message: OutMessage, done: Done | None = None) -> ChatPart:
    extra = done.model_dump() if done is not None else {}
    return ChatPart(
        model=model, created_at=created_at(), message=message, done=done is not None, **extra
    )


def generate_part(model: str, text: str, done: Done | None = None) -> GeneratePart:
    extra = done.model_dump() if done is not None else {}
    return GeneratePart(
        model=model, created_at=created_at(), response=text, done=done is not None, **extra
    )


async def chat_lines(stream: EventStream, model: str, timer: Timer) -> AsyncIterator[bytes]:
    """The NDJSON lines of a started chat stream; closes it when done (or abandoned)."""
    async with stream:
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    timer.mark_output()
                    yield _line(chat_part(model, OutMessage(content=event.text)))
                elif isinstance(event, ToolCallDone):
                    timer.mark_output()
                    message = OutMessage(content="", tool_calls=[out_call(event)])
                    yield _line(chat_part(model, message))
                elif isinstance(event, Finish):
                    timer.mark_output()
                    yield _line(chat_part(model, OutMessage(content=""), timer.done(event)))
                else:
                    timer.mark_output()
        except APIError as exc:
            yield error_line(exc)


async def chat_reply(stream: EventStream, model: str, timer: Timer) -> ChatPart:
    """The whole chat reply of a started stream."""
    pieces: list[str] = []
    calls: list[OutToolCall] = []
    async with stream:
        async for event in stream:
            timer.mark_output()
            if isinstance(event, TextDelta):
                pieces.append(event.text)
            elif isinstance(event, ToolCallDone):
                calls.append(out_call(event))
            elif isinstance(event, Finish):
                message = OutMessage(content="".join(pieces), tool_calls=calls or None)
                return chat_part(model, message, timer.done(event))
    raise APIError("The generation ended without finishing.")  # pragma: no cover


async def generate_lines(stream: EventStream, model: str, timer: Timer) -> AsyncIterator[bytes]:
    """The NDJSON lines of a started generate stream."""
    async with stream:
        try:
            async for event in stream:
                timer.mark_output()
                if isinstance(event, TextDelta):
                    yield _line(generate_part(model, event.text))
                elif isinstance(event, Finish):
                    yield _line(generate_part(model, "", timer.done(event)))
        except APIError as exc:
            yield error_line(exc)


async def generate_reply(stream: EventStream, model: str, timer: Timer) -> GeneratePart:
    pieces: list[str] = []
    async with stream:
        async for event in stream:
            timer.mark_output()
            if isinstance(event, TextDelta):
                pieces.append(event.text)
            elif isinstance(event, Finish):
                return generate_part(model, "".join(pieces), timer.done(event))
    raise APIError("The generation ended without finishing.")  # pragma: no cover


def loaded_part(model: str, chat: bool, reason: str) -> ChatPart | GeneratePart:
    """The answer to a request with nothing to generate: the model was loaded
    (``load``) or unloaded (``unload``)."""
    if chat:
        return ChatPart(
            model=model,
            created_at=created_at(),
            message=OutMessage(content=""),
            done=True,
            done_reason=reason,
        )
    return GeneratePart(
        model=model, created_at=created_at(), response="", done=True, done_reason=reason
    )
