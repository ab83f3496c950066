"""The shelf the core serves from (:class:`~picolm_server.generation.models.ModelSource`):
the catalog's names over the residency's leases.

- A request's name is looked up in the catalog (id or alias; no name is the default
  model), never turned into a path.
- A lease on a model that is not loaded waits for its one load, and counts against a
  bound: at most ``max_waiting`` requests (the server's ``max_queue``) wait for the load
  of one model; more are refused with 429, as a full generation queue is.
- Loads run in a worker thread (loading a model blocks for seconds); a llama.cpp
  model's cost is the resident memory it added, measured around its load; a PicoLM
  model holds no memory while idle (a process per generation), and its estimate is what
  a generation of it costs.
- Models to load at start (the default model, ``preload: true``) load before the server
  listens: a default model that cannot load stops the server with one line, as it
  always has; another that cannot is a warning, and its requests get the reason.
- Model administration changes the shelf while it serves (:meth:`Shelf.add_file`,
  :meth:`Shelf.add_alias`, :meth:`Shelf.remove`): the catalog's names and the
  residency's entries change together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from ..config.settings import ConfigError
from ..engines.base import Engine
from ..errors import ModelLoadFailedError, ModelNotFoundError, QueueFullError
from ..generation.models import LoadedModel, ModelDescription, RequestedModel
from .budget import resident_memory
from .catalog import Catalog, ShelfModel
from .residency import Loaded, ModelSpec, Residency, ResidencyObserver

logger = logging.getLogger("picolm_server")

# OpenAI's owned_by, as each engine's ModelInfo says it.
OWNERS = {"picolm": "picolm", "llama_cpp": "llama.cpp"}

# Builds a model's engine and what serving it takes; blocking, and raising
# ConfigError (or any error) with the reason it cannot.
ModelLoader = Callable[[ShelfModel], LoadedModel]


@dataclass
class _Resident:
    """A loaded model as the residency holds it (it calls ``close`` to unload it)."""

    loaded: LoadedModel

    async def close(self) -> None:
        await self.loaded.close()


def _spec(model: ShelfModel) -> ModelSpec:
    """What the residency knows of a model."""
    return ModelSpec(
        model.id, model.estimate_bytes, model.keep_alive, idle_free=model.engine == "picolm"
    )


class Shelf:
    def __init__(
        self,
        catalog: Catalog,
        loader: ModelLoader,
        *,
        max_loaded_memory: int,
        allow_over_budget: bool = False,
        max_waiting: int = 64,
        observer: ResidencyObserver | None = None,
        measure: Callable[[], int | None] = resident_memory,
    ) -> None:
        self.catalog = catalog
        self._loader = loader
        self._measure = measure
        self._max_waiting = max_waiting
        self._waiting: Counter[str] = Counter()
        # The chat template of each model that has loaded (chosen at its load).
        self._templates: dict[str, str] = {}
        self.residency: Residency[_Resident] = Residency(
            [_spec(model) for model in catalog],
            self._load,
            max_loaded_memory=max_loaded_memory,
            allow_over_budget=allow_over_budget,
            observer=observer,
        )

    # ---- loading ----------------------------------------------------------------------

    def _build(self, model: ShelfModel) -> Loaded[_Resident]:
        """Load ``model`` (blocking) and say what it took."""
        if model.problem is not None:
            raise ModelLoadFailedError(model.id, model.problem)
        before = self._measure()
        loaded = self._loader(model)
        after = self._measure()
        self._templates[model.id] = loaded.template.description
        if model.engine == "picolm":
            memory: int | None = model.estimate_bytes
        else:
            memory = after - before if before is not None and after is not None else None
        return Loaded(_Resident(loaded), memory)

    async def _load(self, spec: ModelSpec) -> Loaded[_Resident]:
        model = self._model(spec.model_id)
        try:
            return await asyncio.to_thread(self._build, model)
        except ConfigError as exc:
            raise ModelLoadFailedError(model.id, str(exc)) from None

    def load_at_start(self) -> None:
        """Load the default model (when it is to be preloaded) and every ``preload``
        model, before the event loop runs. The default model's failure is a
        :class:`ConfigError`; another's is logged, and the model stays on the shelf."""
        for model in self.catalog:
            if not model.preload:
                continue
            default = model is self.catalog.default
            if not default and not self.residency.fits(model.id):
                logger.warning(
                    "model %r is not preloaded: its %d bytes do not fit the loaded-memory "
                    "budget beside the models loaded before it",
                    model.id,
                    model.estimate_bytes,
                )
                continue
            started = time.monotonic()
            try:
                loaded = self._build(model)
            except ConfigError:
                if default:
                    raise
                logger.exception("model %r cannot be preloaded", model.id)
                continue
            except ModelLoadFailedError as exc:
                if default:
                    raise ConfigError(f"{model.origin}: {model.problem}") from None
                logger.warning("model %r cannot be preloaded: %s", model.id, exc.message)
                continue
            self.residency.adopt(model.id, loaded, time.monotonic() - started)

    def start(self) -> None:
        """In the event loop: the preloaded models' ``keep_alive`` starts."""
        self.residency.start()

    async def aclose(self) -> None:
        """Unload every model (at shutdown)."""
        await self.residency.aclose()

    # ---- model administration ---------------------------------------------------------

    async def add_file(self, file: Path) -> ShelfModel:
        """Put a file of the models directory on the shelf (checked off the event loop,
        its engine chosen as at start); :class:`~.catalog.NameTaken` when its id is a
        name already, :class:`ConfigError` when no engine can be configured for it."""
        model = await asyncio.to_thread(self.catalog.directory_model, file)
        self.catalog.add(model)
        self.residency.add(_spec(model))
        logger.info("added %s", model.describe())
        return model

    def add_alias(self, name: str, alias: str) -> ShelfModel:
        """Another name for the model ``name`` names (404 for an unknown one)."""
        model = self.catalog.add_alias(self._model(name).id, alias)
        logger.info("model %r: alias %r added", model.id, alias)
        return model

    async def remove(self, name: str) -> ShelfModel:
        """Take a name off the shelf: an alias alone, or a model's id with the model
        and all its names (unloaded first; 409 while requests use it). The default
        model cannot be removed (``ValueError``). Returns the model as it was."""
        model = self._model(name)
        if name != model.id:
            self.catalog.remove_alias(name)
            logger.info("model %r: alias %r removed", model.id, name)
            return model
        if model is self.catalog.default:
            raise ValueError(f"{name!r} is the default model, which cannot be removed")
        await self.residency.remove(model.id)
        self.catalog.remove(model.id)
        self._templates.pop(model.id, None)
        logger.info("model %r removed from the shelf", model.id)
        return model

    # ---- the core's ModelSource -------------------------------------------------------

    def _model(self, name: str) -> ShelfModel:
        model = self.catalog.find(name)
        if model is None:
            raise ModelNotFoundError(name)
        return model

    def find(self, name: str) -> RequestedModel:
        model = self._model(name)
        return RequestedModel(model.id, model.options)

    @contextlib.asynccontextmanager
    async def lease(
        self, model_id: str, keep_alive: float | None = None
    ) -> AsyncIterator[LoadedModel]:
        waiting = self.residency.value(model_id) is None
        if waiting:
            if self._waiting[model_id] >= self._max_waiting:
                raise QueueFullError(
                    f"The server is busy: {self._waiting[model_id]} requests are waiting "
                    f"for the model `{model_id}` to load. Retry after 5 s.",
                    headers={"Retry-After": "5"},
                )
            self._waiting[model_id] += 1
        async with contextlib.AsyncExitStack() as stack:
            try:
                resident = await stack.enter_async_context(
                    self.residency.acquire(model_id, keep_alive)
                )
            finally:
                if waiting:
                    self._waiting[model_id] -= 1
            yield resident.loaded

    async def unload(self, model_id: str) -> None:
        await self.residency.unload(model_id)

    def loaded_engine(self, model_id: str) -> Engine | None:
        resident = self.residency.value(model_id)
        return resident.loaded.engine if resident is not None else None

    def describe(self) -> list[ModelDescription]:
        descriptions = []
        for model in self.catalog:
            status = self.residency.status(model.id)
            try:
                created = int(model.path.stat().st_mtime)
            except OSError:
                created = 0
            descriptions.append(
                ModelDescription(
                    id=model.id,
                    created=created,
                    owned_by=OWNERS[model.engine],
                    aliases=model.aliases,
                    engine=model.engine,
                    engine_reason=model.engine_reason,
                    loaded=status.loaded,
                    size_bytes=model.size_bytes,
                    memory_bytes=status.memory_bytes,
                    chat_template=self._templates.get(model.id),
                    problem=model.problem,
                )
            )
        return descriptions

    @property
    def running(self) -> int:
        return sum(r.loaded.scheduler.running for r in self.residency.values())

    @property
    def queued(self) -> int:
        return sum(r.loaded.scheduler.queued for r in self.residency.values())
