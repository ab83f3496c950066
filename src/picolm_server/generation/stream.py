"""A started generation as adapters consume it: an async iterator of core events that
owns its scheduler slot and its engine run until it is closed."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from types import TracebackType

import anyio

from .events import GenerationEvent
from .run import Generation


class EventStream:
    """Events of one started generation (the prompt was accepted: ``prompt_tokens`` is
    known). Iterate it once; errors after the start (engine failure, time limit, a reply
    that cannot be what the request demands) are raised from the iteration as
    :class:`~picolm_server.errors.APIError`. Always close it (``aclose()`` or ``async
    with``): that stops the engine and frees the slot, even on cancellation."""

    def __init__(self, generation: Generation, resources: AsyncExitStack) -> None:
        """``resources`` holds what the generation was given to run (its scheduler
        slot); closing the stream closes the engine run, then releases them."""
        self._generation = generation
        self._resources = resources
        resources.push_async_callback(generation.close)
        self._closed = False
        self._events: AsyncGenerator[GenerationEvent, None] | None = None

    @property
    def prompt_tokens(self) -> int:
        return self._generation.outcome.prompt_tokens

    @property
    def cached_tokens(self) -> int:
        return self._generation.outcome.cached_tokens

    @property
    def structured(self) -> bool:
        """Tools or a JSON reply format: the reply may be calls, and plain-text rules
        (a first chunk with ``content: ""``) do not apply."""
        return self._generation.plan is not None

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        if self._events is not None:
            raise RuntimeError("an event stream is iterated once")
        self._events = self._generation.events()
        # Closed before the engine run: it is what reads from it.
        self._resources.push_async_callback(self._events.aclose)
        return self._events

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded: the engine must get to stop its process and the slot must be freed
        # even when this request's task is being cancelled. Each step runs even when
        # one before it fails (the exit stack's order: last pushed, first run).
        with anyio.CancelScope(shield=True):
            await self._resources.aclose()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
