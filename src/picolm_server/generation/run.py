"""One engine generation with the server's rules applied: the time limit, the shutdown
drain, stop strings, the leading-space rule, and (with an output plan) the reading of
the reply into content and validated tool calls, as core events."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import anyio

from ..engines.base import Engine, Finished, GenerationRequest, PromptAccepted
from ..engines.base import GenerationEvent as EngineEvent
from ..engines.base import TextDelta as EngineText
from ..errors import APIError, EngineError, EngineTimeoutError
from ..observability.observation import NO_OBSERVER, GenerationObserver
from ..tool_calls import (
    ContentPiece,
    InvalidModelOutputError,
    OutputPlan,
    ReplyDecoder,
    ReplyEvent,
    argument_fragments,
)
from ..tool_calls.prompt_schema import FENCE_CLOSE, FENCE_OPEN
from .drain import Drain
from .echo import WrapperEcho
from .events import (
    Finish,
    FinishReason,
    GenerationEvent,
    TextDelta,
    ToolCallArguments,
    ToolCallDone,
    ToolCallStart,
    Usage,
)
from .stop_scan import StopScanner


@dataclass
class Outcome:
    """What a generation reports after its text."""

    finish_reason: FinishReason = "stop"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    # Of those, the tokens a grammar fixed and the engine wrote without sampling.
    written_tokens: int = 0
    stop_sequence: str | None = None

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)


@dataclass
class Generation:
    """An engine generation with stop strings, the leading-space rule and a time limit.

    Call :meth:`admit` (before waiting for a slot) and :meth:`start` (it raises before
    any text, e.g. for a prompt that does not fit), then iterate :meth:`events`; always
    :meth:`close`.
    """

    engine: Engine
    request: GenerationRequest
    stops: list[str]
    timeout_seconds: float
    outcome: Outcome = field(default_factory=Outcome)
    # Tools or a JSON response format: the reply text is read by a ReplyDecoder.
    plan: OutputPlan | None = None
    # The client's own stop strings (the rest are the template's end markers).
    client_stops: frozenset[str] = frozenset()
    # A chat reply's one leading space is not text (see Prepared.strip_leading_space).
    strip_leading_space: bool = True
    # The prompt holds tool results: an echo of their wrapper is not reply text.
    drop_result_echo: bool = False
    # Server shutdown: ends a wait for the engine once the drain is over.
    drain: Drain = field(default_factory=Drain)
    observer: GenerationObserver = NO_OBSERVER

    def __post_init__(self) -> None:
        self._generator: AsyncGenerator[EngineEvent, None] | None = None
        # Set again by start(): time spent waiting in the queue is not generation time.
        self._deadline = time.monotonic() + self.timeout_seconds
        self._scanner = StopScanner(self.stops)
        self._echo = WrapperEcho() if self.drop_result_echo else None
        self._at_start = True
        self._at_fence_start = True

    @property
    def _events(self) -> AsyncGenerator[EngineEvent, None]:
        if self._generator is None:
            self._generator = self.engine.generate(self.request)
        return self._generator

    async def admit(self) -> None:
        """The engine's checks that need no generation slot (the prompt fits): call it
        before waiting for one, so that a request that cannot run never holds a slot."""
        self.request = await self.engine.admit(self.request)

    async def _next_event(self) -> EngineEvent:
        try:
            # In this task, not in one of its own as asyncio.wait_for would run it: a
            # cancellation (client gone) then reaches the engine's generator directly, and
            # close() never finds the generator still running in an orphaned task.
            with self.drain.guard(max(self._deadline - time.monotonic(), 0.001)):
                event = await self._events.__anext__()
        except TimeoutError:
            error: APIError = self._timed_out()
        except StopAsyncIteration:
            error = EngineError("The engine ended without finishing the generation.")
        except APIError as exc:
            self.observer.engine_failed(exc)
            raise
        else:
            if time.monotonic() <= self._deadline:
                return event
            # An engine whose events are always ready never lets the timer cancel it.
            error = self._timed_out()
        self.observer.engine_failed(error)
        raise error

    def _timed_out(self) -> EngineTimeoutError:
        return EngineTimeoutError(
            f"The generation did not finish within {self.timeout_seconds:g} seconds."
        )

    async def start(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        event = await self._next_event()
        if not isinstance(event, PromptAccepted):
            raise EngineError("The engine did not report the prompt.")
        self.outcome.prompt_tokens = event.prompt_tokens
        self.outcome.cached_tokens = event.cached_tokens
        self.observer.prompt_accepted(event.prompt_tokens, event.cached_tokens)

    async def text(self) -> AsyncIterator[str]:
        """Reply text as it can be sent: the stop string and anything after it never are."""
        while True:
            event = await self._next_event()
            if isinstance(event, EngineText):
                if self._at_start:
                    self.observer.first_token()
                self.outcome.completion_tokens = event.completion_tokens
                piece = event.text
                if self._at_start and piece:
                    # Templates end with "...assistant\n" and SentencePiece models start
                    # the reply with a word-initial space: one leading space is not text.
                    if self.strip_leading_space and piece.startswith(" "):
                        piece = piece[1:]
                    self._at_start = False
                if self._echo is not None:
                    piece = self._echo.feed(piece)
                released = self._scanner.feed(piece)
                if released:
                    yield released
                if self._scanner.stopped:
                    self.outcome.finish_reason = "stop"
                    matched = self._scanner.matched
                    self.outcome.stop_sequence = matched if matched in self.client_stops else None
                    return
            elif isinstance(event, Finished):
                self.outcome.completion_tokens = event.completion_tokens
                self.outcome.written_tokens = event.written_tokens
                self.outcome.finish_reason = event.reason
                held = self._scanner.feed(self._echo.flush()) if self._echo is not None else ""
                if held:
                    yield held
                if self._scanner.stopped:
                    matched = self._scanner.matched
                    self.outcome.finish_reason = "stop"
                    self.outcome.stop_sequence = matched if matched in self.client_stops else None
                    return
                rest = self._scanner.flush()
                if rest:
                    yield rest
                return

    async def replies(self) -> AsyncIterator[ReplyEvent]:
        """Content and tool calls (only with a plan), each call parsed and validated.

        Ends early, with finish_reason ``tool_calls``, when the model starts repeating a
        call; a reply that cannot be what the request demands raises
        :class:`InvalidModelOutputError` (with ``x-should-retry: false`` when sampling is
        greedy or max_tokens cut the reply, where a retry gives the same result)."""
        assert self.plan is not None
        decoder = ReplyDecoder(self.plan)
        try:
            async for piece in self.text():
                for event in decoder.feed(piece):
                    yield event
                if decoder.done:
                    break
            for event in decoder.finish(self.outcome.finish_reason if not decoder.done else "stop"):
                yield event
        except InvalidModelOutputError as exc:
            if self.request.temperature == 0 or not exc.retryable:
                exc.headers = {**exc.headers, "x-should-retry": "false"}
            raise
        if decoder.closed_by_rule:
            # A json_object reply ended by the rules that keep it valid (json_close).
            self.outcome.finish_reason = "stop"
            self.outcome.stop_sequence = None
        if decoder.calls:
            # Complete, valid calls: a call the model was still writing when max_tokens
            # ran out is dropped (never sent), and the reply is the calls made.
            self.outcome.finish_reason = "tool_calls"
            self.outcome.stop_sequence = None

    async def events(self) -> AsyncGenerator[GenerationEvent, None]:
        """The reply as core events, ending with :class:`Finish`."""
        if self.plan is None:
            async for piece in self.text():
                yield TextDelta(piece)
        else:
            index = 0
            fenced = self.plan.fenced
            async for reply in self.replies():
                if isinstance(reply, ContentPiece):
                    if fenced and self._at_fence_start:
                        # The client asked for a ```json block: the JSON is written in one.
                        self._at_fence_start = False
                        yield TextDelta(FENCE_OPEN)
                    yield TextDelta(reply.text)
                    continue
                yield ToolCallStart(index, reply.id, reply.name)
                for fragment in argument_fragments(reply.arguments):
                    yield ToolCallArguments(index, fragment)
                yield ToolCallDone(index, reply.id, reply.name, reply.arguments)
                index += 1
            if fenced and not self._at_fence_start:
                yield TextDelta(FENCE_CLOSE)
        outcome = self.outcome
        yield Finish(outcome.finish_reason, outcome.usage(), outcome.stop_sequence)

    async def close(self) -> None:
        # Shielded: the engine must get to stop its process even when this request's
        # task is being cancelled (client gone, server shutting down).
        if self._generator is None:
            return
        with anyio.CancelScope(shield=True):
            await self._generator.aclose()
        self.observer.generation_ended(self.outcome.completion_tokens, self.outcome.written_tokens)
