"""Schema-exact JSON replies on PicoLM: the JSON writer's runs as PicoLM generations.

Each run continues the reply written so far: its prompt is the request's prompt plus
that text, so with saved prompt states (:mod:`.prompt_store`) it starts from the longest
saved state and computes only the new tokens. PicoLM saves a run's prompt state only
when the run ends by itself, so a run the writer no longer needs is either stopped at
once or left to finish, whichever costs less: finishing costs the tokens it still may
generate, stopping costs recomputing the tokens it had to compute for its prompt (the
next run then starts from an older state). Only the first run of a reply may have a long
prompt to compute (the conversation, when no saved state covers it): it is asked for at
most ``FIRST_RUN_TOKENS`` tokens when states are saved, which bounds what letting it
finish can cost; later runs compute only reply tokens, so stopping them is cheap and
they are asked for the rest of the budget.

The reply is sent in pieces while it is written: whenever the writer waits for the
model, the part of the reply it can no longer change (:attr:`JSONWriter.settled`) goes
out, so a number the writer had to move into its bounds never reaches the client in its
first form.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from typing import Any

import anyio

from ...errors import APIError, ContextLengthExceededError, EngineError
from ...schema_json import JSONWriter, Limits
from ...tool_calls.plan import Caps
from ..base import Finished, GenerationEvent, GenerationRequest, PromptAccepted, TextDelta

logger = logging.getLogger("picolm_server.engine.picolm_json")

# The most tokens the first run of a reply is asked for when runs save their prompt state.
FIRST_RUN_TOKENS = 16

GenerateText = Callable[[GenerationRequest], AsyncGenerator[GenerationEvent, None]]


class _EngineRun:
    """One PicoLM generation read a character at a time (a :class:`TextRun`)."""

    def __init__(
        self,
        events: AsyncGenerator[GenerationEvent, None],
        max_tokens: int,
        *,
        at_reply_start: bool,
        keeps_state: bool,
        waiting: asyncio.Event | None = None,
    ) -> None:
        self._events = events
        # Set whenever the writer has used up the model's text and waits for more.
        self._waiting = waiting
        self.max_tokens = max_tokens
        self.keeps_state = keeps_state
        self.accepted = PromptAccepted(0)
        self.generated = 0
        self.reason: str | None = None
        self._buffer = ""
        self._strip_space = at_reply_start
        self._ended = False

    async def open(self) -> PromptAccepted:
        event = await self._events.__anext__()
        if not isinstance(event, PromptAccepted):
            raise EngineError("The engine did not report the prompt.")
        self.accepted = event
        return event

    async def next_char(self) -> str | None:
        while not self._buffer:
            if self._ended:
                return None
            if self._waiting is not None:
                self._waiting.set()
            try:
                event = await self._events.__anext__()
            except StopAsyncIteration:
                self._ended = True
                return None
            if isinstance(event, TextDelta):
                self.generated = event.completion_tokens
                text = event.text
                if self._strip_space and text:
                    # As for any reply: SentencePiece starts it with a word-initial space.
                    text = text.removeprefix(" ")
                    self._strip_space = False
                self._buffer += text
            elif isinstance(event, Finished):
                self.reason = event.reason
                self.generated = event.completion_tokens
                self._ended = True
        char, self._buffer = self._buffer[0], self._buffer[1:]
        return char

    @property
    def stopped_by_model(self) -> bool:
        return self.reason == "stop"

    async def stop(self) -> None:
        if not self._ended:
            computed = self.accepted.prompt_tokens - self.accepted.cached_tokens
            still_to_generate = self.max_tokens - self.generated
            if self.keeps_state and computed > still_to_generate:
                # Cheaper to let it end by itself, which saves its prompt state.
                with contextlib.suppress(APIError):
                    async for _ in self._events:
                        pass
            self._ended = True
        await self._events.aclose()


class _NoRoom:
    """A run that could not start: the context is full. The writer ends the reply."""

    stopped_by_model = True

    async def next_char(self) -> str | None:
        return None

    async def stop(self) -> None:
        return None


async def generate_schema_json(
    generate_text: GenerateText,
    request: GenerationRequest,
    schema: dict[str, Any],
    *,
    prompt_tokens: int | None,
    count_tokens: Callable[[str], int],
    keeps_state: bool,
) -> AsyncGenerator[GenerationEvent, None]:
    """Engine events for a reply that is a JSON value matching ``schema``.

    ``prompt_tokens`` is the prompt's token count when known (else the first run's);
    ``keeps_state``: runs save their prompt state for the next one."""
    caps = Caps.for_budget(request.max_tokens)
    limits = Limits(
        max_tokens=request.max_tokens,
        string_cap=caps.string,
        array_cap=caps.array,
        first_run_tokens=FIRST_RUN_TOKENS if keeps_state else request.max_tokens,
    )
    first_accepted: asyncio.Future[PromptAccepted] = asyncio.get_running_loop().create_future()
    waiting = asyncio.Event()
    opened: list[AsyncGenerator[GenerationEvent, None]] = []

    async def start_run(text: str, max_tokens: int) -> _EngineRun | _NoRoom:
        first = not first_accepted.done()
        sub_request = replace(
            request,
            prompt=request.prompt + text,
            max_tokens=max_tokens,
            constraint=None,
            shared_prefix=request.shared_prefix if first else None,
            # The request's own tokens and template split describe its prompt only: a run
            # that continues a reply has a longer prompt, tokenized afresh.
            prompt_tokens=request.prompt_tokens if not text else None,
            split_prompt=request.split_prompt if not text else None,
        )
        events = generate_text(sub_request)
        opened.append(events)
        run = _EngineRun(
            events,
            max_tokens,
            at_reply_start=not text,
            keeps_state=keeps_state,
            waiting=waiting,
        )
        try:
            accepted = await run.open()
        except ContextLengthExceededError:
            if first:
                raise
            return _NoRoom()
        if first:
            first_accepted.set_result(accepted)
        return run

    started = time.monotonic()
    writer = JSONWriter(schema, start_run, limits, count_tokens)
    task: asyncio.Future[str] = asyncio.ensure_future(writer.write())
    try:
        waited: set[asyncio.Future[Any]] = {first_accepted, task}
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what the writer raised
        first = first_accepted.result() if first_accepted.done() else None
        if prompt_tokens is None:
            prompt_tokens = first.prompt_tokens if first is not None else 0
        cached = min(first.cached_tokens, prompt_tokens) if first is not None else 0
        yield PromptAccepted(prompt_tokens, cached)
        sent = ""
        async for piece in _settled_pieces(writer, task, waiting):
            sent += piece
            yield TextDelta(piece, writer.tokens_so_far)
        text = task.result()
        if not text.startswith(sent):
            raise EngineError("The JSON writer changed text it had already sent.")
        tokens = count_tokens(text)
        logger.debug(
            "schema JSON: %d runs, %d characters in %.2fs",
            writer.runs,
            len(text),
            time.monotonic() - started,
        )
        if len(text) > len(sent):
            yield TextDelta(text[len(sent) :], tokens)
        yield Finished("stop", tokens)
    finally:
        with anyio.CancelScope(shield=True):
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for events in opened:
                await events.aclose()
            if not first_accepted.done():
                first_accepted.cancel()


async def _settled_pieces(
    writer: JSONWriter, task: asyncio.Future[str], waiting: asyncio.Event
) -> AsyncGenerator[str, None]:
    """New settled text each time the writer waits for the model, until it is done."""
    sent = 0
    while not task.done():
        waiter: asyncio.Future[Any] = asyncio.ensure_future(waiting.wait())
        try:
            pending: set[asyncio.Future[Any]] = {task, waiter}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        waiting.clear()
        settled = writer.settled
        if len(settled) > sent and not task.done():
            yield settled[sent:]
            sent = len(settled)
    task.result()  # raises what the writer raised
