"""The shelf changed while it serves (model administration): a file added as a
directory model, an alias added and removed, a model removed (unloaded first, never
while a request holds it, never the default model), the residency kept in step."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from picolm_server.config.settings import Settings
from picolm_server.errors import ModelBusyError, ModelNotFoundError
from picolm_server.shelf.catalog import Catalog, NameTaken, build_catalog
from picolm_server.shelf.residency import ModelSpec
from tests.shelf.conftest import write_model
from tests.shelf.test_residency import FakeClock, Loader, settle, shelf, use
from tests.shelf.test_shelf import Bench, cold, reply

pytestmark = pytest.mark.anyio


# ---- the residency ------------------------------------------------------------------------


async def test_a_model_added_is_loaded_on_its_first_lease() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 100)], loader, clock)
    with pytest.raises(ModelNotFoundError):
        await use(residency, "b")
    residency.add(ModelSpec("b", 100))
    assert not residency.status("b").loaded
    assert await use(residency, "b") == "b"
    assert loader.loads == ["b"]
    with pytest.raises(ValueError, match="already"):
        residency.add(ModelSpec("b", 100))


async def test_removing_a_loaded_model_unloads_it_and_forgets_it() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 100, keep_alive=-1), ModelSpec("b", 300)], loader, clock)
    await use(residency, "a")
    assert residency.loaded_memory() == 100
    await residency.remove("a")
    assert loader.closed == ["a"]
    assert residency.loaded_memory() == 0
    assert [s.model_id for s in residency.statuses()] == ["b"]
    with pytest.raises(ModelNotFoundError):
        residency.status("a")
    with pytest.raises(ModelNotFoundError):
        await use(residency, "a")


async def test_a_model_in_use_is_not_removed_and_keeps_serving() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 100)], loader, clock)
    release = asyncio.Event()

    async def hold() -> None:
        async with residency.acquire("a"):
            await release.wait()

    holder = asyncio.create_task(hold())
    await settle()
    with pytest.raises(ModelBusyError, match="in use by 1 request"):
        await residency.remove("a")
    assert residency.status("a").loaded and loader.closed == []
    release.set()
    await holder
    await residency.remove("a")
    assert loader.closed == ["a"]


async def test_a_model_whose_load_runs_is_not_removed() -> None:
    loader, clock = Loader(), FakeClock()
    loader.gate = asyncio.Event()
    residency = shelf([ModelSpec("a", 100)], loader, clock)
    task = asyncio.create_task(use(residency, "a"))
    await settle()
    task.cancel()  # the waiter leaves; the load runs on
    await settle()
    with pytest.raises(ModelBusyError):
        await residency.remove("a")
    loader.gate.set()
    await settle()
    await residency.remove("a")
    assert loader.closed == ["a"]


async def test_no_lease_starts_while_a_removed_model_closes() -> None:
    loader, clock = Loader(), FakeClock()
    residency = shelf([ModelSpec("a", 100, keep_alive=-1)], loader, clock)
    await use(residency, "a")
    closing = asyncio.Event()
    model = residency.value("a")
    assert model is not None
    close = model.close

    async def slow_close() -> None:
        await closing.wait()
        await close()

    model.close = slow_close  # type: ignore[method-assign]
    removal = asyncio.create_task(residency.remove("a"))
    await settle()
    late = asyncio.create_task(use(residency, "a"))
    await settle()
    assert late.done() and isinstance(late.exception(), ModelNotFoundError)
    assert residency.loaded_memory() == 100  # counted until closed
    closing.set()
    await removal
    assert loader.loads == ["a"] and loader.closed == ["a"]
    assert residency.loaded_memory() == 0


# ---- the catalog --------------------------------------------------------------------------


def catalog_of(tmp_path: Path) -> Catalog:
    """A catalog with a default model and an empty models directory."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    default = write_model(tmp_path / "default.gguf")
    settings = Settings.from_values(
        {
            "llama_cpp": {"model_path": str(default), "model_id": "default"},
            "models_dir": str(models_dir),
            "shelf": {"keep_alive": "7m"},
        }
    )
    return build_catalog(settings)


def test_a_directory_file_is_made_a_model_as_at_start(tmp_path: Path) -> None:
    catalog = catalog_of(tmp_path)
    file = write_model(catalog.models_dir / "tiny.gguf")
    model = catalog.directory_model(file)
    assert (model.id, model.source, model.engine, model.problem) == (
        "tiny",
        "models_dir",
        "llama_cpp",
        None,
    )
    assert model.estimate_bytes > 0 and model.size_bytes == file.stat().st_size
    assert model.keep_alive == 420.0  # the shelf's setting, as at start
    catalog.add(model)
    assert catalog.find("tiny") is model and len(catalog) == 2
    with pytest.raises(NameTaken, match="already the name of the model 'tiny'"):
        catalog.add(model)
    broken = catalog.models_dir / "broken.gguf"
    broken.write_bytes(b"GGUF and nothing else")
    assert catalog.directory_model(broken).problem is not None


def test_aliases_come_and_go_and_a_name_is_never_given_twice(tmp_path: Path) -> None:
    catalog = catalog_of(tmp_path)
    catalog.add(catalog.directory_model(write_model(catalog.models_dir / "tiny.gguf")))
    model = catalog.add_alias("tiny", "chat")
    assert model.aliases == ("chat",) and catalog.find("chat") is catalog.find("tiny") is model
    for taken in ("chat", "tiny", "default"):
        with pytest.raises(NameTaken):
            catalog.add_alias("tiny", taken)
    with pytest.raises(NameTaken, match="not a model name"):
        catalog.add_alias("tiny", " spaced ")
    catalog.add_alias("default", "main")
    assert catalog.default.aliases == ("main",) and catalog.find("") is catalog.default
    assert catalog.remove_alias("chat").id == "tiny"
    assert catalog.find("chat") is None and catalog.find("tiny") is not None
    with pytest.raises(ValueError, match="id, not an alias"):
        catalog.remove_alias("tiny")


def test_a_model_is_removed_with_its_names_but_never_the_default(tmp_path: Path) -> None:
    catalog = catalog_of(tmp_path)
    catalog.add(catalog.directory_model(write_model(catalog.models_dir / "tiny.gguf")))
    catalog.add_alias("tiny", "chat")
    with pytest.raises(ValueError, match="default model"):
        catalog.remove("default")
    with pytest.raises(ValueError, match="an alias"):
        catalog.remove("chat")
    assert catalog.remove("tiny").id == "tiny"
    assert catalog.find("tiny") is None and catalog.find("chat") is None
    assert [m.id for m in catalog] == ["default"]


# ---- the shelf ----------------------------------------------------------------------------


async def test_an_alias_serves_and_removing_a_model_ends_its_names() -> None:
    bench = Bench([cold("smol"), cold("gemma")])
    bench.shelf.add_alias("gemma", "g3")
    assert await reply(bench.model("g3"), "hello") == "hello"
    assert bench.loads["gemma"] == 1
    assert (await bench.shelf.remove("g3")).id == "gemma"  # the alias alone
    with pytest.raises(ModelNotFoundError):
        bench.model("g3")
    assert await reply(bench.model("gemma"), "still here") == "still here"
    await bench.shelf.remove("gemma")
    for name in ("gemma", "g3"):
        with pytest.raises(ModelNotFoundError):
            bench.model(name)
    # It was loaded: unloaded (closed) on the way out.
    assert [e.unloaded for e in bench.engines["gemma"]] == [1]
    assert [d.id for d in bench.shelf.describe()] == ["smol"]
    with pytest.raises(ValueError, match="default model"):
        await bench.shelf.remove("smol")


async def test_a_model_found_before_its_removal_is_not_loaded_after_it() -> None:
    bench = Bench([cold("smol"), cold("gemma")])
    core = bench.model("gemma")  # found, not yet leased
    await bench.shelf.remove("gemma")
    with pytest.raises(ModelNotFoundError):
        await reply(core, "too late")
    assert bench.loads["gemma"] == 0


async def test_a_file_added_is_on_the_shelf_and_serves(tmp_path: Path) -> None:
    bench = Bench([cold("smol")])
    model = await bench.shelf.add_file(write_model(tmp_path / "tiny.gguf"))
    assert model.id == "tiny" and model.problem is None
    assert [d.id for d in bench.shelf.describe()] == ["smol", "tiny"]
    assert not bench.shelf.residency.status("tiny").loaded
    assert await reply(bench.model("tiny"), "new") == "new"
    with pytest.raises(NameTaken):
        await bench.shelf.add_file(write_model(tmp_path / "smol.gguf"))
    assert [d.id for d in bench.shelf.describe()] == ["smol", "tiny"]
