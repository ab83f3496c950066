"""Scripted engines on a real model shelf: the core as the server builds it, over
engines that need no model file.

:func:`scripted_shelf` puts one :class:`~tests.support.scripted_engine.ScriptedEngine`
per model id on a :class:`~picolm_server.shelf.shelf.Shelf` (its real catalog lookup,
residency, leases and budget); its loader hands out the given engine, so a test can
count loads and unloads (``engine.unloaded``). :func:`scripted_core` is the generation
core over one scripted model, bound to it: what wire-format tests drive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

from picolm_server.config.settings import GenerationDefaults, PicoLMSection, PromptSchemaSetting
from picolm_server.engines.base import Engine
from picolm_server.generation import GenerationCore, ModelCore
from picolm_server.generation.models import LoadedModel
from picolm_server.generation.scheduler import Scheduler
from picolm_server.prompting.chat_template import ChatTemplate, builtin_template_source
from picolm_server.shelf.catalog import Catalog, ShelfModel
from picolm_server.shelf.residency import ResidencyObserver
from picolm_server.shelf.shelf import Shelf

CHATML = ChatTemplate("chatml", builtin_template_source("chatml"), eos_token="<|im_end|>")
TEST_DEFAULTS = GenerationDefaults(max_tokens=50, temperature=0.3, top_p=0.8)
KEEP_FOREVER = -1.0
NO_BUDGET = 1 << 50


def _section(defaults: GenerationDefaults) -> PicoLMSection:
    """The defaults as the section a catalog entry carries."""
    values = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(GenerationDefaults)}
    return PicoLMSection(**values)


def shelf_model(
    model_id: str,
    defaults: GenerationDefaults = TEST_DEFAULTS,
    *,
    keep_alive: float = KEEP_FOREVER,
    preload: bool = True,
    memory_bytes: int = 0,
    aliases: tuple[str, ...] = (),
) -> ShelfModel:
    """A catalog entry for a scripted model (its file is never opened)."""
    return ShelfModel(
        id=model_id,
        aliases=aliases,
        path=Path(f"/nonexistent/{model_id}.gguf"),
        engine="llama_cpp",
        engine_reason="scripted",
        options=_section(defaults),
        keep_alive=keep_alive,
        preload=preload,
        size_bytes=memory_bytes,
        estimate_bytes=memory_bytes,
        source="models",
        origin=model_id,
    )


def scripted_shelf(
    engines: Mapping[str, Engine],
    *,
    models: Mapping[str, ShelfModel] | None = None,
    template: ChatTemplate = CHATML,
    scheduler: Callable[[Engine], Scheduler] = lambda engine: Scheduler(1, 1),
    max_loaded_memory: int = NO_BUDGET,
    max_waiting: int = 64,
    observer: ResidencyObserver | None = None,
) -> Shelf:
    """A shelf of ``engines`` by model id (the first is the default model), each
    described by ``models`` (default: :func:`shelf_model`, preloaded, kept forever)
    and loaded as itself. The preloaded ones are loaded here."""
    entries = {model_id: shelf_model(model_id) for model_id in engines}
    entries.update(models or {})
    catalog = Catalog(tuple(entries.values()), next(iter(engines)), Path("/nonexistent"))

    def load(model: ShelfModel) -> LoadedModel:
        engine = engines[model.id]
        return LoadedModel(engine, template, model.options, scheduler(engine))

    shelf = Shelf(
        catalog,
        load,
        max_loaded_memory=max_loaded_memory,
        max_waiting=max_waiting,
        observer=observer,
        measure=lambda: None,
    )
    shelf.load_at_start()
    return shelf


def scripted_core(
    engine: Engine,
    *,
    template: ChatTemplate = CHATML,
    defaults: GenerationDefaults = TEST_DEFAULTS,
    scheduler: Scheduler | None = None,
    prompt_schema: PromptSchemaSetting = "json_object",
) -> ModelCore:
    """The core over ``engine`` alone (served under its model id), bound to it."""
    model_id = engine.model.id
    shelf = scripted_shelf(
        {model_id: engine},
        models={model_id: shelf_model(model_id, defaults)},
        template=template,
        scheduler=lambda _: scheduler or Scheduler(1, 1),
    )
    return GenerationCore(models=shelf, prompt_schema=prompt_schema).model(model_id)
