"""The model shelf's series in GET /metrics' text: :class:`ShelfMetrics` as the observer
of a real :class:`Residency`, read back from the exposition prometheus_client writes.

The loader is a small one whose models have an async ``close()``; time is a clock the
tests set, so that load seconds are exact and no wall clock is involved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from picolm_server.errors import ModelLoadFailedError
from picolm_server.generation.scheduler import Scheduler
from picolm_server.observability.metrics import ServerMetrics, ShelfMetrics
from picolm_server.shelf.residency import Loaded, ModelSpec, Residency, ResidencyObserver

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

MIB = 1024 * 1024
# Measured memory of each model, as a loader that measures it reports it.
MEMORY = {"smollm2": 150 * MIB, "gemma": 300 * MIB}


class Model:
    def __init__(self, model_id: str, closed: list[str]) -> None:
        self.model_id = model_id
        self._closed = closed

    async def close(self) -> None:
        await asyncio.sleep(0)
        self._closed.append(self.model_id)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Loads :class:`Model` s, each taking ``seconds[model]`` on the clock; ``gate``
    holds every load until it is set."""

    def __init__(self, clock: Clock, seconds: dict[str, float]) -> None:
        self.clock = clock
        self.seconds = seconds
        self.loads: list[str] = []
        self.closed: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, spec: ModelSpec) -> Loaded[Model]:
        self.loads.append(spec.model_id)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.clock.now += self.seconds.get(spec.model_id, 0.0)
        return Loaded(Model(spec.model_id, self.closed), MEMORY[spec.model_id])


class Shelf:
    def __init__(
        self,
        specs: Iterable[ModelSpec],
        *,
        budget: int = 1024 * MIB,
        seconds: dict[str, float] | None = None,
    ) -> None:
        self.clock = Clock()
        self.loader = Loader(self.clock, seconds or {})
        self.observer = ShelfMetrics()
        # What integration passes: the observer, typed as the residency's protocol.
        observer: ResidencyObserver = self.observer
        self.residency = Residency(
            specs, self.loader, max_loaded_memory=budget, observer=observer, clock=self.clock
        )
        self.metrics = ServerMetrics("llama_cpp", Scheduler(1, 0), shelf=self.observer)

    def scrape(self) -> Samples:
        samples: Samples = {}
        text = self.metrics.exposition().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def spec(model_id: str, keep_alive: float = -1.0) -> ModelSpec:
    return ModelSpec(model_id, estimate_bytes=MEMORY[model_id], keep_alive=keep_alive)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_before_any_load_only_the_memory_gauge_has_a_sample() -> None:
    shelf = Shelf([spec("smollm2")])
    samples = shelf.scrape()
    assert value(samples, "picolm_models_loaded_memory_bytes") == 0
    shelf_names = {name for name, _ in samples if name.startswith("picolm_model")}
    assert shelf_names == {"picolm_models_loaded_memory_bytes"}


async def test_a_load_is_counted_with_its_seconds_and_memory() -> None:
    shelf = Shelf([spec("smollm2")], seconds={"smollm2": 1.5})
    async with shelf.residency.acquire("smollm2"):
        samples = shelf.scrape()
    assert value(samples, "picolm_model_loads_total", model="smollm2") == 1
    assert value(samples, "picolm_model_unloads_total", model="smollm2") is None
    assert value(samples, "picolm_model_load_seconds_count", model="smollm2") == 1
    assert value(samples, "picolm_model_load_seconds_sum", model="smollm2") == 1.5
    # 1.5 s falls in the 2.5 s bucket, not the 1 s one.
    assert value(samples, "picolm_model_load_seconds_bucket", model="smollm2", le="1.0") == 0
    assert value(samples, "picolm_model_load_seconds_bucket", model="smollm2", le="2.5") == 1
    assert value(samples, "picolm_model_memory_bytes", model="smollm2") == MEMORY["smollm2"]
    assert value(samples, "picolm_models_loaded_memory_bytes") == MEMORY["smollm2"]
    await shelf.residency.aclose()


async def test_eight_requests_for_a_cold_model_count_one_load() -> None:
    shelf = Shelf([spec("smollm2")])
    shelf.loader.gate.clear()
    entered = 0

    async def request() -> None:
        nonlocal entered
        async with shelf.residency.acquire("smollm2"):
            entered += 1

    tasks = [asyncio.create_task(request()) for _ in range(8)]
    await settle()
    assert value(shelf.scrape(), "picolm_model_loads_total", model="smollm2") is None
    shelf.loader.gate.set()
    await asyncio.gather(*tasks)
    assert entered == 8
    samples = shelf.scrape()
    assert value(samples, "picolm_model_loads_total", model="smollm2") == 1
    assert value(samples, "picolm_model_load_seconds_count", model="smollm2") == 1
    await shelf.residency.aclose()


async def test_a_swap_counts_the_unload_and_the_memory_follows() -> None:
    # Room for one model at a time: each request for the other swaps.
    shelf = Shelf([spec("smollm2"), spec("gemma")], budget=400 * MIB)
    for model_id in ("smollm2", "gemma", "smollm2"):
        async with shelf.residency.acquire(model_id):
            samples = shelf.scrape()
            assert value(samples, "picolm_models_loaded_memory_bytes") == MEMORY[model_id]
    samples = shelf.scrape()
    assert value(samples, "picolm_model_loads_total", model="smollm2") == 2
    assert value(samples, "picolm_model_loads_total", model="gemma") == 1
    assert value(samples, "picolm_model_unloads_total", model="smollm2") == 1
    assert value(samples, "picolm_model_unloads_total", model="gemma") == 1
    assert value(samples, "picolm_model_memory_bytes", model="gemma") == 0
    assert value(samples, "picolm_model_memory_bytes", model="smollm2") == MEMORY["smollm2"]
    assert shelf.loader.closed == ["smollm2", "gemma"]
    await shelf.residency.aclose()


async def test_an_idle_unload_drops_the_memory_to_zero() -> None:
    shelf = Shelf([spec("smollm2", keep_alive=0)])
    async with shelf.residency.acquire("smollm2"):
        pass
    await settle()  # keep_alive 0: closed as soon as the lease ends, in a task
    assert shelf.loader.closed == ["smollm2"]
    samples = shelf.scrape()
    assert value(samples, "picolm_model_unloads_total", model="smollm2") == 1
    assert value(samples, "picolm_model_memory_bytes", model="smollm2") == 0
    assert value(samples, "picolm_models_loaded_memory_bytes") == 0


async def test_shutdown_counts_every_unload() -> None:
    shelf = Shelf([spec("smollm2"), spec("gemma")])
    await shelf.residency.preload(["smollm2", "gemma"])
    assert value(shelf.scrape(), "picolm_models_loaded_memory_bytes") == sum(MEMORY.values())
    await shelf.residency.aclose()
    samples = shelf.scrape()
    for model_id in MEMORY:
        assert value(samples, "picolm_model_unloads_total", model=model_id) == 1
    assert value(samples, "picolm_models_loaded_memory_bytes") == 0


async def test_a_failed_load_is_not_counted_as_a_load() -> None:
    shelf = Shelf([spec("smollm2")])
    shelf.loader.fail = RuntimeError("not a GGUF")
    with pytest.raises(ModelLoadFailedError):
        async with shelf.residency.acquire("smollm2"):
            pass
    samples = shelf.scrape()
    assert shelf.loader.loads == ["smollm2"]
    assert value(samples, "picolm_model_loads_total", model="smollm2") is None
    assert value(samples, "picolm_model_load_seconds_count", model="smollm2") is None
    assert value(samples, "picolm_models_loaded_memory_bytes") == 0


async def test_the_series_are_scraped_only_when_the_app_takes_them() -> None:
    shelf = Shelf([spec("smollm2")])
    await shelf.residency.preload(["smollm2"])
    without = ServerMetrics("llama_cpp", Scheduler(1, 0)).exposition().decode()
    assert "picolm_model" not in without
    assert "picolm_model_loads_total" in shelf.metrics.exposition().decode()
    await shelf.residency.aclose()
