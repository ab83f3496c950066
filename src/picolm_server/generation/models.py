"""What the core serves from: the models a request can name, and what a loaded one gives.

The core never holds an engine of its own. A request's ``model`` is looked up in a
:class:`ModelSource` (the server's is the model shelf, :mod:`picolm_server.shelf`),
which answers with a :class:`RequestedModel` (its id and generation defaults, known
without loading it) or a 404. A generation then holds a lease on the model
(:meth:`ModelSource.lease`) for as long as it runs: the lease loads the model when it is
not loaded, and a leased model is never unloaded. A :class:`LoadedModel` is the engine
with what serving it takes: its chat template, its defaults and its own scheduler.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from ..config.settings import GenerationDefaults
from ..engines.base import Engine
from ..prompting.chat_template import ChatTemplate
from .scheduler import Scheduler


@dataclass(frozen=True)
class RequestedModel:
    """A model a request named, found: its id (the one replies carry, whatever alias
    was asked for) and the generation defaults of its settings."""

    id: str
    defaults: GenerationDefaults


@dataclass(frozen=True)
class LoadedModel:
    """A model in memory: its engine and what serving it takes. Each model has its own
    scheduler (its engine's slots and the queue in front of them)."""

    engine: Engine
    template: ChatTemplate
    defaults: GenerationDefaults
    scheduler: Scheduler

    async def close(self) -> None:
        """Free the engine's memory; off the event loop (it joins the engine's threads)."""
        await asyncio.to_thread(self.engine.close)


class ModelSource(Protocol):
    """The models the core can serve."""

    def find(self, name: str) -> RequestedModel:
        """The model ``name`` is an id or alias of (no name: the default model); raises
        :class:`~picolm_server.errors.ModelNotFoundError` for any other name."""
        ...

    def lease(
        self, model_id: str, keep_alive: float | None = None
    ) -> AbstractAsyncContextManager[LoadedModel]:
        """Hold ``model_id`` loaded for the ``async with`` block (loading it first when
        it is not): the load's errors (``model_load_failed``, ``insufficient_memory``,
        a full queue of requests waiting for it) are raised on entry. ``keep_alive``
        (seconds; negative: forever): how long it stays loaded once this lease ends,
        instead of its setting (a request's own, as Ollama's API takes it)."""
        ...

    async def unload(self, model_id: str) -> None:
        """Unload ``model_id`` now, or when its last lease ends."""
        ...

    def loaded_engine(self, model_id: str) -> Engine | None:
        """The model's engine when it is loaded, else None; never loads it."""
        ...

    def describe(self) -> list[ModelDescription]:
        """Every model, in the order of the configuration (the default model first)."""
        ...

    def start(self) -> None:
        """The server's event loop runs: timers (``keep_alive``) may start."""
        ...

    async def aclose(self) -> None:
        """The server stops: unload every model."""
        ...

    @property
    def running(self) -> int:
        """Generations running, over every loaded model."""
        ...

    @property
    def queued(self) -> int:
        """Generations waiting for a slot, over every loaded model."""
        ...


@dataclass(frozen=True)
class ModelDescription:
    """One model as ``/v1/models`` shows it: OpenAI's fields, then the shelf's."""

    id: str
    created: int  # the file's modification time
    owned_by: str
    aliases: tuple[str, ...]
    engine: str  # "picolm" or "llama_cpp"
    engine_reason: str  # why that engine
    loaded: bool
    size_bytes: int  # the file
    memory_bytes: int  # measured while loaded (or since its last load), else the estimate
    # The chat template's description once the model has loaded (it is chosen then).
    chat_template: str | None
    # Why it cannot load, when that was found without loading it (a missing file).
    problem: str | None = None
