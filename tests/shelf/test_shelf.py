"""The shelf the core serves from, over scripted engines: names, leases, one load for
many waiting requests, swaps within a budget, keep_alive 0, failed and oversized loads,
the bound on requests waiting for a load, and the listing.

Loads run in a worker thread as the server's do; a :class:`Gate` holds a load until the
test lets it finish, so that requests can pile up behind it without a wall clock.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from picolm_server.errors import (
    InsufficientMemoryError,
    ModelLoadFailedError,
    ModelNotFoundError,
    QueueFullError,
)
from picolm_server.generation import Conversation, GenerationCore, GenerationSpec, ModelCore
from picolm_server.generation.models import LoadedModel
from picolm_server.generation.scheduler import Scheduler
from picolm_server.shelf.catalog import Catalog, ShelfModel
from picolm_server.shelf.shelf import Shelf
from tests.support.scripted_engine import DirectedEngine
from tests.support.scripted_shelf import CHATML, NO_BUDGET, shelf_model

pytestmark = pytest.mark.anyio

MB = 1_000_000


class Gate:
    """Holds every load until opened (from the event loop's side)."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def wait(self) -> None:
        assert self._open.wait(timeout=60), "the test never opened the gate"


class Bench:
    """A shelf of directed engines by id, counting loads, with a gate on loading."""

    def __init__(
        self,
        models: list[ShelfModel],
        *,
        budget: int = NO_BUDGET,
        max_waiting: int = 64,
        fail: dict[str, str] | None = None,
    ) -> None:
        self.loads: Counter[str] = Counter()
        self.engines: dict[str, list[DirectedEngine]] = {}
        self.gate = Gate()
        self.fail = fail or {}
        self.shelf = Shelf(
            Catalog(tuple(models), models[0].id, Path("/nonexistent")),
            self._load,
            max_loaded_memory=budget,
            max_waiting=max_waiting,
            measure=lambda: None,
        )
        self.core = GenerationCore(models=self.shelf)

    def _load(self, model: ShelfModel) -> LoadedModel:
        self.gate.wait()
        self.loads[model.id] += 1
        if model.id in self.fail:
            raise RuntimeError(self.fail[model.id])
        engine = DirectedEngine()
        engine.model = replace(engine.model, id=model.id, context_length=512)
        self.engines.setdefault(model.id, []).append(engine)
        return LoadedModel(engine, CHATML, model.options, Scheduler(1, 8))

    def model(self, name: str) -> ModelCore:
        return self.core.model(name)


def cold(model_id: str, *, memory: int = 10 * MB, keep_alive: float = -1.0) -> ShelfModel:
    return shelf_model(model_id, preload=False, memory_bytes=memory, keep_alive=keep_alive)


def ask(text: str) -> GenerationSpec:
    return GenerationSpec(Conversation(({"role": "user", "content": text},)))


async def reply(core: ModelCore, text: str) -> str:
    return (await core.complete(ask(f"[[reply:{text}]]"))).text


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_names_are_looked_up_never_made_into_paths() -> None:
    bench = Bench([cold("smol", keep_alive=-1), replace(cold("gemma"), aliases=("g3",))])
    assert bench.model("").model_id == "smol"  # no name: the default model
    assert bench.model("g3").model_id == "gemma"
    for name in ("../../etc/passwd", "/nonexistent/smol.gguf", "smol.gguf", "SMOL"):
        with pytest.raises(ModelNotFoundError):
            bench.model(name)
    assert sum(bench.loads.values()) == 0  # finding a model never loads it


async def test_eight_requests_for_a_cold_model_cause_one_load() -> None:
    bench = Bench([cold("smol")])
    bench.gate.close()
    core = bench.model("smol")
    tasks = [asyncio.create_task(reply(core, f"answer {i}")) for i in range(8)]
    await settle()
    bench.gate.open()
    answers = await asyncio.gather(*tasks)
    assert answers == [f"answer {i}" for i in range(8)]
    assert bench.loads == Counter({"smol": 1})


async def test_a_budget_for_one_model_swaps_on_every_alternate_request() -> None:
    bench = Bench([cold("a"), cold("b")], budget=15 * MB)
    for turn in range(6):
        name = "ab"[turn % 2]
        assert await reply(bench.model(name), f"{name} turn {turn}") == f"{name} turn {turn}"
        assert [s.loaded for s in bench.shelf.residency.statuses()] == [name == "a", name == "b"]
    assert bench.loads == Counter({"a": 3, "b": 3})
    # Every unloaded engine was closed; the one loaded now was not.
    assert [e.unloaded for e in bench.engines["a"]] == [1, 1, 1]
    assert [e.unloaded for e in bench.engines["b"]] == [1, 1, 0]


async def test_concurrent_requests_to_two_models_within_a_budget_for_one() -> None:
    bench = Bench([cold("a"), cold("b")], budget=15 * MB)
    texts = [("ab"[i % 2], f"request {i}") for i in range(10)]
    answers = await asyncio.gather(*(reply(bench.model(name), text) for name, text in texts))
    assert answers == [text for _, text in texts]
    assert bench.shelf.residency.loaded_memory() <= 15 * MB


async def test_keep_alive_zero_unloads_when_the_last_request_ends() -> None:
    bench = Bench([cold("smol", keep_alive=0)])
    assert await reply(bench.model("smol"), "hello") == "hello"
    assert not bench.shelf.residency.status("smol").loaded
    (engine,) = bench.engines["smol"]
    # The engine closes in a worker thread: wait for it (never a time limit's verdict).
    for _ in range(6000):
        if not bench.shelf.residency.loaded_memory():
            break
        await asyncio.sleep(0.01)
    assert engine.unloaded == 1


async def test_a_failed_load_names_the_model_and_the_cause_and_others_serve() -> None:
    bench = Bench([cold("good"), cold("broken")], fail={"broken": "not a GGUF file"})
    tasks = [asyncio.create_task(reply(bench.model("broken"), "x")) for _ in range(3)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        assert isinstance(result, ModelLoadFailedError)
        assert (result.status_code, result.code) == (500, "model_load_failed")
        assert result.message == "The model `broken` failed to load: not a GGUF file"
    assert bench.loads["broken"] == 1  # the waiting requests shared the one failed load
    assert await reply(bench.model("good"), "still here") == "still here"


async def test_a_problem_found_in_the_catalog_fails_the_load_without_trying() -> None:
    broken = replace(cold("gone"), problem="no such file")
    bench = Bench([cold("good"), broken])
    with pytest.raises(ModelLoadFailedError, match=r"`gone` failed to load: no such file"):
        await reply(bench.model("gone"), "x")
    assert bench.loads["gone"] == 0


async def test_a_model_bigger_than_the_budget_is_refused_with_both_figures() -> None:
    bench = Bench([cold("small"), cold("huge", memory=50 * MB)], budget=20 * MB)
    with pytest.raises(InsufficientMemoryError) as caught:
        await reply(bench.model("huge"), "x")
    assert (caught.value.status_code, caught.value.code) == (503, "insufficient_memory")
    assert "50000000 bytes" in caught.value.message and "20000000 bytes" in caught.value.message
    assert bench.loads["huge"] == 0


async def test_requests_waiting_for_a_load_are_bounded_by_the_queue() -> None:
    bench = Bench([cold("smol")], max_waiting=3)
    bench.gate.close()
    core = bench.model("smol")
    waiting = [asyncio.create_task(reply(core, f"w{i}")) for i in range(3)]
    await settle()
    with pytest.raises(QueueFullError):
        await reply(core, "one too many")
    bench.gate.open()
    assert await asyncio.gather(*waiting) == ["w0", "w1", "w2"]
    assert await reply(core, "after") == "after"  # loaded: no wait, no bound


async def test_the_listing_says_engine_loaded_size_and_memory() -> None:
    bench = Bench([cold("a", memory=12 * MB), cold("b", memory=7 * MB)])
    await reply(bench.model("b"), "x")
    listing = {m.id: m for m in bench.shelf.describe()}
    assert [(m.loaded, m.memory_bytes, m.size_bytes) for m in listing.values()] == [
        (False, 12 * MB, 12 * MB),
        (True, 7 * MB, 7 * MB),
    ]
    assert listing["b"].chat_template == CHATML.description
    assert listing["a"].chat_template is None  # chosen at its first load
    assert bench.shelf.loaded_engine("a") is None
    assert bench.shelf.loaded_engine("b") is bench.engines["b"][0]
