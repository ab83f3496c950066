"""Which of the shelf's models are in memory: loading, leases, keep_alive, the budget.

Generic over what a loaded model is: the shelf is given a loader (a callable) and calls
the loaded value's ``close()`` to unload it. A request holds a :meth:`Residency.acquire`
lease while it runs or waits; a leased model is never unloaded.

- One load per model: requests that name a model while it loads wait for that load and
  share its outcome, the value or the same error.
- ``keep_alive`` (seconds): negative keeps a model forever, 0 unloads it when its last
  lease ends, a positive value unloads it that long after its last lease ends. A lease
  may carry its own (a request's ``keep_alive``): when it ends, that is the model's
  until the next lease ends; a lease without one restores the model's setting.
  :meth:`Residency.unload` unloads a model now, or when its last lease ends.
- A budget in bytes: a model's cost is its estimate until it has loaded once, then what
  the load measured. A load that would not fit first unloads idle models, least recently
  used first. When the models in the way are busy, the load waits for leases to end
  rather than failing: a busy model frees its memory within one generation, and the
  caller's queue limit and timeout bound the wait (cancelling ``acquire`` ends it). A
  model bigger than the budget alone is refused (:class:`InsufficientMemoryError`)
  unless ``allow_over_budget``; then loads proceed when the idle models are gone.
- Loads run one at a time, so that a resident-memory measure taken before and after a
  load (``measure``) sees that load alone.
- Models come and go while the server runs (:meth:`Residency.add`,
  :meth:`Residency.remove`): a model is removed only when no lease holds it and no load
  of it runs (else :class:`ModelBusyError`, 409: a removal never waits on a generation
  or cuts one short); a loaded one is unloaded first, its memory counted until it is.

Time is injected (``clock`` and ``sleep``) so that tests drive keep_alive without a wall
clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ..config.settings import MAX_KEEP_ALIVE_SECONDS
from ..errors import (
    InsufficientMemoryError,
    ModelBusyError,
    ModelLoadFailedError,
    ModelNotFoundError,
)

log = logging.getLogger(__name__)

DEFAULT_KEEP_ALIVE = 300.0


class Closeable(Protocol):
    async def close(self) -> None: ...


M = TypeVar("M", bound=Closeable)


@dataclass(frozen=True)
class ModelSpec:
    """One model the shelf can load: its id, cost estimate and residency settings."""

    model_id: str
    estimate_bytes: int
    keep_alive: float = DEFAULT_KEEP_ALIVE
    # True for models that hold no memory while idle (PicoLM runs a process per
    # generation): they cost nothing without a lease and are never evicted for room.
    idle_free: bool = False


@dataclass(frozen=True)
class Loaded(Generic[M]):
    """What a loader returns: the model and, when it knows, the memory it took."""

    value: M
    memory_bytes: int | None = None


Loader = Callable[[ModelSpec], Awaitable[Loaded[M]]]


class ResidencyObserver(Protocol):
    """Events for metrics (loads, unloads, load seconds, loaded memory)."""

    def model_loaded(self, model_id: str, seconds: float, memory_bytes: int) -> None: ...
    def model_unloaded(self, model_id: str) -> None: ...
    def loaded_memory(self, total_bytes: int) -> None: ...


class NoObserver:
    def model_loaded(self, model_id: str, seconds: float, memory_bytes: int) -> None:
        pass

    def model_unloaded(self, model_id: str) -> None:
        pass

    def loaded_memory(self, total_bytes: int) -> None:
        pass


@dataclass(frozen=True)
class ModelStatus:
    """One model as /v1/models and /api/ps show it."""

    model_id: str
    loaded: bool
    # Measured while loaded (or once measured), else the estimate.
    memory_bytes: int
    # Clock time of the keep_alive unload; None while leased, unloaded, or kept forever.
    expires_at: float | None
    leases: int
    # Seconds it stays loaded once its leases end (negative: forever).
    keep_alive: float = DEFAULT_KEEP_ALIVE


class _Entry(Generic[M]):
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.value: M | None = None
        self.loading: asyncio.Future[M] | None = None
        self.reserved = False  # counted at its size while its load runs
        self.closing = False  # counted at its size until close() returns
        self.leases = 0
        self.measured: int | None = None
        self.last_used = 0.0
        self.expires_at: float | None = None
        self.timer: asyncio.Task[None] | None = None
        # What applies once the last lease ends: the setting, or the last lease's own.
        self.keep_alive = spec.keep_alive
        self.unload_asked = False  # unload() while leased: at the last release
        self.removed = False  # taken off the shelf: no new lease

    @property
    def size(self) -> int:
        return self.measured if self.measured is not None else self.spec.estimate_bytes

    @property
    def cost(self) -> int:
        if self.reserved or self.closing:
            return self.size
        if self.value is None or (self.spec.idle_free and self.leases == 0):
            return 0
        return self.size


class Residency(Generic[M]):
    """The shelf's models in memory: leases, one load per model, keep_alive, the budget."""

    def __init__(
        self,
        specs: Iterable[ModelSpec],
        loader: Loader[M],
        *,
        max_loaded_memory: int,
        allow_over_budget: bool = False,
        measure: Callable[[], int] | None = None,
        observer: ResidencyObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._entries: dict[str, _Entry[M]] = {s.model_id: _Entry(s) for s in specs}
        self._loader = loader
        self.max_loaded_memory = max_loaded_memory
        self.allow_over_budget = allow_over_budget
        self._measure = measure
        self._observer: ResidencyObserver = observer or NoObserver()
        self._clock = clock
        self._sleep = sleep
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- requests ---------------------------------------------------------------------

    @asynccontextmanager
    async def acquire(self, model_id: str, keep_alive: float | None = None) -> AsyncIterator[M]:
        """A lease on ``model_id``: loads it if needed; it stays loaded until released.

        ``keep_alive`` (seconds, negative: forever, at most a setting's bound): how long
        the model stays loaded after this lease ends, instead of its setting.
        """
        if keep_alive is not None and keep_alive > MAX_KEEP_ALIVE_SECONDS:
            raise ValueError(f"keep_alive is at most {MAX_KEEP_ALIVE_SECONDS:.0f} seconds")
        entry = self._entries.get(model_id)
        if entry is None or entry.removed:
            raise ModelNotFoundError(model_id)
        entry.leases += 1
        self._cancel_timer(entry)
        try:
            value = await self._ensure_loaded(entry)
            entry.last_used = self._clock()
            yield value
        finally:
            entry.leases -= 1
            entry.last_used = self._clock()
            if not entry.unload_asked:
                entry.keep_alive = entry.spec.keep_alive if keep_alive is None else keep_alive
            if entry.leases == 0 and entry.value is not None:
                self._schedule_unload(entry)
            self._notify()

    async def unload(self, model_id: str) -> None:
        """Unload ``model_id`` now when no lease holds it (returning once it is closed),
        else when its last lease ends. Unloaded already: nothing to do."""
        entry = self._entries.get(model_id)
        if entry is None:
            raise ModelNotFoundError(model_id)
        entry.keep_alive = 0.0
        entry.unload_asked = entry.leases > 0
        if entry.value is not None and entry.leases == 0:
            self._cancel_timer(entry)
            await self._unload(entry)

    def adopt(self, model_id: str, loaded: Loaded[M], seconds: float) -> None:
        """Take a model loaded before the event loop ran (at start, where a failure can
        still stop the server) as if this shelf had loaded it. Its ``keep_alive``
        starts with :meth:`start`."""
        entry = self._entries[model_id]
        if entry.value is not None or entry.loading is not None:
            raise RuntimeError(f"{model_id} is loaded already")
        entry.value = loaded.value
        if loaded.memory_bytes is not None:
            entry.measured = loaded.memory_bytes
        entry.last_used = self._clock()
        log.info("model %s loaded in %.2f s, %d bytes", model_id, seconds, entry.size)
        self._observer.model_loaded(model_id, seconds, entry.size)
        self._observer.loaded_memory(self.loaded_memory())

    def start(self) -> None:
        """Start the ``keep_alive`` of the models :meth:`adopt` took (in the event loop)."""
        for entry in self._entries.values():
            if entry.value is not None and entry.leases == 0 and entry.timer is None:
                self._schedule_unload(entry)

    def fits(self, model_id: str) -> bool:
        """Whether ``model_id`` would fit the budget beside the models loaded now."""
        entry = self._entries[model_id]
        used = sum(e.cost for e in self._entries.values() if e is not entry)
        return self.allow_over_budget or used + entry.size <= self.max_loaded_memory

    async def preload(self, model_ids: Iterable[str]) -> None:
        """Load ``model_ids`` (at start); they then follow their keep_alive."""
        for model_id in model_ids:
            async with self.acquire(model_id):
                pass

    # ---- models added and removed -----------------------------------------------------

    def add(self, spec: ModelSpec) -> None:
        """A model put on the shelf while the server runs; not loaded."""
        if spec.model_id in self._entries:
            raise ValueError(f"{spec.model_id!r} is on the shelf already")
        self._entries[spec.model_id] = _Entry(spec)

    async def remove(self, model_id: str) -> None:
        """Take ``model_id`` off the shelf, unloading it first when it is loaded (and
        returning once it is closed). :class:`ModelBusyError` while a lease holds it or
        its load runs: nothing changes then."""
        entry = self._entries.get(model_id)
        if entry is None or entry.removed:
            raise ModelNotFoundError(model_id)
        if entry.leases > 0 or entry.loading is not None:
            raise ModelBusyError(
                f"The model `{model_id}` is in use by {entry.leases} request(s); "
                "try again when they have ended."
            )
        # From here no lease can start (acquire refuses a removed entry).
        entry.removed = True
        self._cancel_timer(entry)
        try:
            await self._unload(entry)
            while entry.closing:  # an unload begun before (keep_alive 0) is still closing
                await self._changed.wait()
        finally:
            del self._entries[model_id]
            self._observer.loaded_memory(self.loaded_memory())
            self._notify()

    # ---- status -----------------------------------------------------------------------

    def status(self, model_id: str) -> ModelStatus:
        entry = self._entries.get(model_id)
        if entry is None:
            raise ModelNotFoundError(model_id)
        return ModelStatus(
            model_id=model_id,
            loaded=entry.value is not None,
            memory_bytes=entry.size,
            expires_at=entry.expires_at,
            leases=entry.leases,
            keep_alive=entry.keep_alive,
        )

    def value(self, model_id: str) -> M | None:
        """The loaded model, or None; never loads it."""
        entry = self._entries.get(model_id)
        return entry.value if entry is not None else None

    def values(self) -> list[M]:
        """Every loaded model."""
        return [e.value for e in self._entries.values() if e.value is not None]

    def statuses(self) -> list[ModelStatus]:
        return [self.status(model_id) for model_id, e in self._entries.items() if not e.removed]

    def loaded_memory(self) -> int:
        """Bytes the loaded (and loading) models count against the budget."""
        return sum(e.cost for e in self._entries.values())

    async def aclose(self) -> None:
        """Unload every model (at shutdown) and wait for their close() to return."""
        for entry in self._entries.values():
            self._cancel_timer(entry)
            if entry.value is not None:
                self._start_unload(entry)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- loading ----------------------------------------------------------------------

    async def _ensure_loaded(self, entry: _Entry[M]) -> M:
        if entry.value is not None:
            return entry.value
        if entry.loading is None:
            future: asyncio.Future[M] = asyncio.get_running_loop().create_future()
            # Mark the outcome retrieved: a load every waiter left must not warn.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            entry.loading = future
            self._spawn(self._load(entry, future))
        # The load is its own task, shielded: a waiter that leaves does not cancel it
        # for the others.
        return await asyncio.shield(entry.loading)

    async def _load(self, entry: _Entry[M], future: asyncio.Future[M]) -> None:
        spec = entry.spec
        try:
            await self._make_room(entry)
            async with self._load_lock:
                before = self._measure() if self._measure is not None else None
                started = self._clock()
                loaded = await self._loader(spec)
                seconds = self._clock() - started
                after = self._measure() if self._measure is not None else None
            if loaded.memory_bytes is not None:
                entry.measured = loaded.memory_bytes
            elif before is not None and after is not None:
                entry.measured = max(0, after - before)
            entry.value = loaded.value
            entry.reserved = False
            entry.loading = None
            future.set_result(loaded.value)
            log.info("model %s loaded in %.2f s, %d bytes", spec.model_id, seconds, entry.size)
            self._observer.model_loaded(spec.model_id, seconds, entry.size)
            if entry.leases == 0:
                self._schedule_unload(entry)
        except BaseException as exc:  # every waiter gets the outcome, cancellation too
            entry.reserved = False
            entry.loading = None
            error: BaseException = exc
            if isinstance(exc, asyncio.CancelledError):
                error = ModelLoadFailedError(spec.model_id, "the load was cancelled")
            elif not isinstance(exc, InsufficientMemoryError | ModelLoadFailedError):
                error = ModelLoadFailedError(spec.model_id, str(exc) or type(exc).__name__)
                error.__cause__ = exc
            log.warning("model %s failed to load: %s", spec.model_id, error)
            future.set_exception(error)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._notify()
            self._observer.loaded_memory(self.loaded_memory())

    async def _make_room(self, entry: _Entry[M]) -> None:
        """Reserve ``entry``'s size in the budget, unloading idle models or waiting."""
        need = entry.size
        budget = self.max_loaded_memory
        if need > budget and not self.allow_over_budget:
            raise InsufficientMemoryError(entry.spec.model_id, need, budget)
        while True:
            if entry.closing:  # its previous instance is still closing: never two
                await self._changed.wait()
                continue
            used = sum(e.cost for e in self._entries.values() if e is not entry)
            if used + need <= budget:
                break
            idle = [
                e
                for e in self._entries.values()
                if e is not entry and e.value is not None and e.leases == 0 and e.cost > 0
            ]
            if idle:
                victim = min(idle, key=lambda e: e.last_used)
                log.info(
                    "unloading %s to make room for %s", victim.spec.model_id, entry.spec.model_id
                )
                self._cancel_timer(victim)
                await self._unload(victim)
                continue
            if self.allow_over_budget:
                break
            changed = self._changed
            await changed.wait()
        # Checked and reserved with no await in between: concurrent loads see it.
        entry.reserved = True

    # ---- unloading --------------------------------------------------------------------

    def _schedule_unload(self, entry: _Entry[M]) -> None:
        keep_alive = entry.keep_alive
        if keep_alive < 0:
            entry.expires_at = None
        elif keep_alive == 0:
            self._start_unload(entry)
        else:
            entry.expires_at = self._clock() + keep_alive
            entry.timer = asyncio.get_running_loop().create_task(self._expire(entry))

    async def _expire(self, entry: _Entry[M]) -> None:
        while entry.expires_at is not None:
            remaining = entry.expires_at - self._clock()
            if remaining <= 0:
                entry.timer = None
                if entry.leases == 0 and entry.value is not None:
                    await self._unload(entry)
                return
            await self._sleep(remaining)

    def _cancel_timer(self, entry: _Entry[M]) -> None:
        entry.expires_at = None
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None

    def _start_unload(self, entry: _Entry[M]) -> None:
        value = self._detach(entry)
        if value is not None:
            self._spawn(self._close(entry, value))

    async def _unload(self, entry: _Entry[M]) -> None:
        value = self._detach(entry)
        if value is not None:
            await self._close(entry, value)

    def _detach(self, entry: _Entry[M]) -> M | None:
        """Take the model off the entry at once (a new lease loads it afresh); its memory
        stays counted until close() returns."""
        value = entry.value
        if value is None or entry.leases > 0:
            return None
        entry.value = None
        entry.expires_at = None
        entry.closing = True
        entry.unload_asked = False
        return value

    async def _close(self, entry: _Entry[M], value: M) -> None:
        try:
            await value.close()
        except Exception:
            log.exception("model %s: close failed", entry.spec.model_id)
        finally:
            entry.closing = False
            log.info("model %s unloaded", entry.spec.model_id)
            self._observer.model_unloaded(entry.spec.model_id)
            self._observer.loaded_memory(self.loaded_memory())
            self._notify()

    # ---- plumbing ---------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
