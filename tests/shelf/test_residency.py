"""The shelf's residency: one load per model, keep_alive, leases, the memory budget.

Loaders are scripted (an asyncio Event decides when a load finishes) and time is a
:class:`FakeClock` the tests advance: no wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from picolm_server.config.settings import MAX_KEEP_ALIVE_SECONDS
from picolm_server.errors import (
    InsufficientMemoryError,
    ModelLoadFailedError,
    ModelNotFoundError,
)
from picolm_server.shelf.residency import Loaded, ModelSpec, Residency

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, future in list(self._sleepers):
            if deadline <= self.now and not future.done():
                future.set_result(None)
        self._sleepers = [(d, f) for d, f in self._sleepers if not f.done()]
        await settle()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class Model:
    def __init__(self, model_id: str, closed: list[str]) -> None:
        self.model_id = model_id
        self._closed = closed

    async def close(self) -> None:
        self._closed.append(self.model_id)


class Loader:
    """Loads :class:`Model` s; ``gate`` (when set) holds a load until it is set."""

    def __init__(self, measured: dict[str, int] | None = None) -> None:
        self.loads: list[str] = []
        self.closed: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.measured = measured or {}

    async def __call__(self, spec: ModelSpec) -> Loaded[Model]:
        self.loads.append(spec.model_id)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return Loaded(Model(spec.model_id, self.closed), self.measured.get(spec.model_id))


def shelf(
    specs: Iterable[ModelSpec],
    loader: Loader,
    clock: FakeClock,
    *,
    budget: int = 10**9,
    allow_over_budget: bool = False,
) -> Residency[Model]:
    return Residency(
        specs,
        loader,
        max_loaded_memory=budget,
        allow_over_budget=allow_over_budget,
        clock=clock,
        sleep=clock.sleep,
    )


async def use(residency: Residency[Model], model_id: str) -> str:
    async with residency.acquire(model_id) as model:
        await asyncio.sleep(0)
        return model.model_id


async def test_concurrent_acquires_of_a_cold_model_load_it_once() -> None:
    loader, clock = Loader(), FakeClock()
    loader.gate = asyncio.Event()
    residency = shelf([ModelSpec("a", 100)], loader, clock)
    tasks = [asyncio.create_task(use(residency, "a")) for _ in range(8)]
    await settle()
    assert loader.loads == ["a"]
    assert residency.status("a").leases == 8
    loader.gate.set()
    assert await asyncio.gather(*tasks) == ["a"] * 8
    assert loader.loads == ["a"]


async def test_a_failed_load_fails_every_waiter_with_one_error_and_is_retried() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 100), ModelSpec("b", 100)], loader, clock)
    async with residency.acquire("b"):
        pass
    loader.gate = asyncio.Event()
    loader.fail = FileNotFoundError("no such file: a.gguf")
    tasks = [asyncio.create_task(use(residency, "a")) for _ in range(4)]
    await settle()
    loader.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ModelLoadFailedError) for r in results)
    assert len({id(r) for r in results}) == 1
    error = results[0]
    assert isinstance(error, ModelLoadFailedError)
    assert error.code == "model_load_failed" and error.status_code == 500
    assert "`a`" in error.message and "no such file: a.gguf" in error.message
    assert loader.loads == ["b", "a"]
    assert await use(residency, "b") == "b"  # the other model still serves
    loader.fail = None
    assert await use(residency, "a") == "a"
    assert loader.loads == ["b", "a", "a"]


async def test_an_unknown_model_is_model_not_found() -> None:
    residency = shelf([ModelSpec("a", 100)], Loader(), FakeClock())
    with pytest.raises(ModelNotFoundError):
        await use(residency, "../../etc/passwd")


async def test_keep_alive_zero_unloads_at_the_last_release() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 100, keep_alive=0)], loader, clock)
    async with residency.acquire("a"):
        async with residency.acquire("a"):
            pass
        assert residency.status("a").loaded
    assert not residency.status("a").loaded
    await settle()
    assert loader.closed == ["a"]


async def test_negative_keep_alive_never_unloads() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 100, keep_alive=-1)], loader, clock)
    await use(residency, "a")
    await clock.advance(10**9)
    assert residency.status("a").loaded and residency.status("a").expires_at is None
    assert loader.closed == []


async def test_positive_keep_alive_unloads_after_that_time_and_not_before() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 100, keep_alive=60)], loader, clock)
    await use(residency, "a")
    assert residency.status("a").expires_at == clock.now + 60
    await clock.advance(59)
    assert residency.status("a").loaded
    await clock.advance(1)
    assert not residency.status("a").loaded
    assert loader.closed == ["a"]


async def test_a_held_lease_prevents_unloading() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 100, keep_alive=60)], loader, clock)
    await use(residency, "a")
    async with residency.acquire("a"):
        assert residency.status("a").expires_at is None
        await clock.advance(1000)
        assert residency.status("a").loaded
    await clock.advance(59)
    assert residency.status("a").loaded
    await clock.advance(1)
    assert not residency.status("a").loaded


async def test_a_lease_keep_alive_replaces_the_setting_until_the_next_lease() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 100, keep_alive=60)], loader, clock)
    async with residency.acquire("a", keep_alive=600):
        pass
    assert residency.status("a").expires_at == clock.now + 600
    await clock.advance(599)
    assert residency.status("a").loaded
    async with residency.acquire("a"):  # no keep_alive of its own: the setting again
        pass
    assert residency.status("a").expires_at == clock.now + 60
    await clock.advance(60)
    assert not residency.status("a").loaded


async def test_a_lease_keep_alive_of_zero_unloads_and_a_negative_one_keeps() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 100, keep_alive=60), ModelSpec("b", 100)], loader, clock)
    async with residency.acquire("a", keep_alive=0):
        assert residency.status("a").loaded
    await settle()
    assert loader.closed == ["a"]
    async with residency.acquire("b", keep_alive=-1):
        pass
    await clock.advance(10**9)
    assert residency.status("b").loaded and residency.status("b").expires_at is None


async def test_a_lease_keep_alive_beyond_the_settings_bound_is_refused() -> None:
    residency = shelf([ModelSpec("a", 100)], Loader(), FakeClock())
    with pytest.raises(ValueError, match="at most"):
        async with residency.acquire("a", keep_alive=MAX_KEEP_ALIVE_SECONDS + 1):
            pass
    async with residency.acquire("a", keep_alive=MAX_KEEP_ALIVE_SECONDS):
        pass


async def test_unload_closes_an_idle_model_now_and_a_leased_one_at_its_release() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 100, keep_alive=-1)], loader, clock)
    await use(residency, "a")
    await residency.unload("a")
    assert not residency.status("a").loaded and loader.closed == ["a"]
    await residency.unload("a")  # unloaded already: nothing happens
    async with residency.acquire("a"):
        await residency.unload("a")
        assert residency.status("a").loaded
    await settle()
    assert not residency.status("a").loaded and loader.closed == ["a", "a"]
    with pytest.raises(ModelNotFoundError):
        await residency.unload("b")


async def test_a_budget_of_one_model_swaps_on_alternate_requests() -> None:
    loader, clock = Loader(), FakeClock()
    specs = [ModelSpec("a", 600), ModelSpec("b", 600)]
    residency = shelf(specs, loader, clock, budget=1000)
    order = ["a", "b"] * 4
    tasks = [asyncio.create_task(use(residency, m)) for m in order]
    assert await asyncio.gather(*tasks) == order
    sequential = [await use(residency, m) for m in order]
    assert sequential == order
    assert loader.loads[-len(order) :] == order
    assert residency.loaded_memory() <= 1000


async def test_idle_models_are_evicted_least_recently_used_first() -> None:
    loader, clock = Loader(), FakeClock()
    specs = [ModelSpec(m, 400) for m in "abcd"]
    residency = shelf(specs, loader, clock, budget=1200)
    for m in "abc":
        await use(residency, m)
        clock.now += 1
    await use(residency, "a")  # b is now the least recently used
    clock.now += 1
    await use(residency, "d")
    assert loader.closed == ["b"]
    clock.now += 1
    await use(residency, "b")
    assert loader.closed == ["b", "c"]


async def test_a_load_waits_for_busy_models_instead_of_failing() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 600), ModelSpec("b", 600)], loader, clock, budget=1000)
    async with residency.acquire("a"):
        waiting = asyncio.create_task(use(residency, "b"))
        await settle()
        assert loader.loads == ["a"] and not waiting.done()
    assert await waiting == "b"
    assert loader.closed == ["a"]


async def test_a_model_bigger_than_the_budget_is_refused_with_both_figures() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("big", 5000)], loader, clock, budget=1000)
    with pytest.raises(InsufficientMemoryError) as caught:
        await use(residency, "big")
    assert caught.value.status_code == 503 and caught.value.code == "insufficient_memory"
    assert "5000" in caught.value.message and "1000" in caught.value.message
    assert loader.loads == []


async def test_allow_over_budget_loads_a_model_bigger_than_the_budget() -> None:
    loader, clock = Loader(), FakeClock()
    specs = [ModelSpec("a", 500), ModelSpec("big", 5000)]
    residency = shelf(specs, loader, clock, budget=1000, allow_over_budget=True)
    await use(residency, "a")
    assert await use(residency, "big") == "big"
    assert loader.closed == ["a"]  # idle models still make room first


async def test_measured_memory_replaces_the_estimate_in_eviction() -> None:
    # Estimated at 300 each, three fit in 1000; b measures 600, so c's load evicts a.
    loader, clock = Loader(measured={"b": 600}), FakeClock()
    specs = [ModelSpec(m, 300) for m in "abc"]
    residency = shelf(specs, loader, clock, budget=1000)
    await use(residency, "a")
    clock.now += 1
    await use(residency, "b")
    assert residency.status("b").memory_bytes == 600
    clock.now += 1
    await use(residency, "c")
    assert loader.closed == ["a"]


async def test_idle_free_models_cost_nothing_while_idle() -> None:
    loader, clock = Loader(), FakeClock()
    specs = [ModelSpec("pico", 600, idle_free=True), ModelSpec("b", 600)]
    residency = shelf(specs, loader, clock, budget=1000)
    await use(residency, "pico")
    await use(residency, "b")
    assert loader.closed == []
    assert residency.status("pico").loaded and residency.loaded_memory() == 600


async def test_close_errors_are_logged_not_raised() -> None:
    class Broken(Model):
        async def close(self) -> None:
            raise RuntimeError("close failed")

    async def load(spec: ModelSpec) -> Loaded[Model]:
        return Loaded(Broken(spec.model_id, []))

    clock = FakeClock()
    residency: Residency[Model] = Residency(
        [ModelSpec("a", 1, keep_alive=0)], load, max_loaded_memory=10, clock=clock
    )
    await use(residency, "a")
    await settle()
    assert not residency.status("a").loaded


async def test_preload_loads_at_start() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 1), ModelSpec("b", 1)], loader, clock)
    await residency.preload(["a", "b"])
    assert loader.loads == ["a", "b"]
    assert all(s.loaded for s in residency.statuses())
    await residency.aclose()
    assert sorted(loader.closed) == ["a", "b"]
