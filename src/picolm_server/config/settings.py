"""Server configuration: the YAML file layout, environment variables and their precedence.

The file keeps the layout of the original Go server (``server:``, ``picolm:``,
``logging:``) so its configuration files load unchanged; ``engine:`` and ``llama_cpp:``
are additions with defaults, and so is the model shelf: ``models_dir``, ``models:`` (one
:class:`ModelEntry` each) and ``shelf:`` (:class:`ShelfSection`), which
:mod:`picolm_server.shelf.catalog` turns into the list of models served. Sources,
highest first: command-line flags, environment variables (``PICOLM_<SECTION>__<KEY>``,
e.g. ``PICOLM_SERVER__PORT``), the YAML file, defaults. Any problem is raised as
:class:`ConfigError` with a one-line message that names the key or path.

Environment variables are decoded by pydantic-settings (:mod:`.config_env`), which is
imported only when one of them is set: a server configured by its file and flags alone
does not load it (about 1 MiB of memory; docs/benchmarks.md). The sources are merged as
pydantic-settings merges them (:func:`merge_sources`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from .check import Before, SettingsInvalid, setting, validate_settings

ENV_PREFIX = "PICOLM_"
ENV_NESTED_DELIMITER = "__"
MIB = 1024 * 1024

_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": MIB,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""


def parse_size(value: object) -> int:
    """Accept a byte count as an integer or a string such as ``"4MiB"`` or ``"512k"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size in bytes")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE_PATTERN.match(value)
        if match:
            number, unit = match.groups()
            return int(float(number) * _SIZE_UNITS[(unit or "").lower()])
    raise ValueError('expected a size in bytes, such as 4194304 or "4MiB"')


# A byte count written as a number or with a unit ("4MiB").
ByteSize = Annotated[int, Before(parse_size)]

# The longest a context may be, in tokens: far past any model a small machine runs,
# and a bound on what a configuration (or, later, a request) can make the engine allocate.
MAX_CONTEXT_LENGTH = 1 << 20
# The longest finite keep_alive: 30 days. Longer is what a negative value says (forever).
MAX_KEEP_ALIVE_SECONDS = 30 * 24 * 3600.0
KEEP_FOREVER = -1.0
DEFAULT_KEEP_ALIVE_SECONDS = 300.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from a number or a duration such as ``"5m"``, ``"1h30m"``, ``"30s"``,
    ``"250ms"`` (Go's and Ollama's spelling); any negative value is
    :data:`KEEP_FOREVER`."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration")
    seconds: float | None = None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body) if body else None
        except ValueError:
            parts = _DURATION_PART.findall(body)
            if parts and "".join(number + unit for number, unit in parts) == body:
                seconds = sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds is None or seconds != seconds:  # nothing read, or NaN
        raise ValueError('expected seconds or a duration, such as 300, "5m" or "1h"')
    return KEEP_FOREVER if seconds < 0 else seconds


# A time span: seconds, or a duration with units; negative means forever.
Duration = Annotated[float, Before(parse_duration)]

# max_loaded_memory: "auto" (stored as this) is a share of the memory available at start.
AUTO_MEMORY_BUDGET = 0


def parse_memory_budget(value: object) -> int:
    """``"auto"`` (:data:`AUTO_MEMORY_BUDGET`) or a size in bytes (:func:`parse_size`)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return AUTO_MEMORY_BUDGET
    return parse_size(value)


MemoryBudget = Annotated[int, Before(parse_memory_budget)]


def _split_origins(value: object) -> object:
    """``"*"`` or ``"https://a, https://b"`` as well as a YAML list."""
    if isinstance(value, str):
        return [origin.strip() for origin in value.split(",") if origin.strip()]
    return value


OriginList = Annotated[list[str], Before(_split_origins)]


def _url_prefixes(value: object) -> object:
    """``server.pull_allow``: URL prefixes, each ``http(s)://host[:port]/`` and any path
    after it. The host is named whole (the ``/`` after it is required), so that a prefix
    never lets in another host that merely starts the same (``huggingface.co.example``)."""
    from urllib.parse import urlsplit

    prefixes = _split_origins(value)
    if not isinstance(prefixes, list):
        return prefixes
    for prefix in prefixes:
        if not isinstance(prefix, str):
            continue  # the list's own check words it
        parts = urlsplit(prefix)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or "@" in parts.netloc
            or not parts.path.startswith("/")
            or parts.query
            or parts.fragment
        ):
            raise ValueError(
                f"{prefix!r} is not a URL prefix such as https://huggingface.co/ "
                "(http or https, a host, then a path starting with /)"
            )
    return prefixes


UrlPrefixList = Annotated[list[str], Before(_url_prefixes)]

# Who may use the endpoints that change the shelf (/api/pull, /api/delete, /api/copy):
# "loopback": clients on this machine, or anyone presenting the API key when one is set;
# "key": anyone presenting the API key (one must be set); "any": anyone who can reach
# the server (and passes the key check, when a key is set); "off": nobody.
ModelAdmin = Literal["loopback", "key", "any", "off"]
# What /api/pull fetches from by default: Hugging Face's download URLs (hf:// names too).
DEFAULT_PULL_ALLOW = ("https://huggingface.co/",)
# The disk space a pull leaves free in the models directory's file system.
DEFAULT_PULL_RESERVE = 1024 * MIB


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


LogLevel = Annotated[Literal["debug", "info", "warning", "error", "critical"], Before(_lower)]

# Sections are plain dataclasses checked by config_check (pydantic's rules, without
# loading pydantic before the server is ready: about a third of the start-up time).
# Frozen: settings are read everywhere and changed nowhere once loaded.


@dataclass(frozen=True)
class ServerSection:
    host: str = "0.0.0.0"
    port: int = setting(8080, ge=0, le=65535)
    api_key: str = ""
    # Generations at once; 0: as many as the engine runs together (PicoLM one,
    # llama.cpp its ``parallel`` slots).
    max_concurrent: int = setting(0, ge=0)
    max_queue: int = setting(16, ge=0)
    max_body: ByteSize = setting(4 * MIB, ge=1024)
    # Limits on connections and time: see limits.py and drain.py.
    max_connections: int = setting(100, ge=1)
    max_header_size: ByteSize = setting(16 * 1024, ge=1024)
    header_timeout: float = setting(10.0, gt=0.0)
    body_timeout: float = setting(60.0, gt=0.0)
    keep_alive_timeout: int = setting(5, ge=1)
    shutdown_timeout: float = setting(30.0, ge=0.0)
    # Browser origins allowed to call the API ("*" for any); none by default.
    cors_origins: OriginList = field(default_factory=list)
    metrics_public: bool = False  # /metrics without the key
    ui: bool = True  # the chat page at /
    # SSE comment sent when a stream has been quiet this long (0 = never).
    sse_ping_seconds: float = setting(10.0, ge=0.0)
    # Model administration (api/ollama/admin.py): who may pull, copy and delete models,
    # the URL prefixes a pull may fetch from, and the disk space a pull leaves free.
    model_admin: ModelAdmin = "loopback"
    pull_allow: UrlPrefixList = field(default_factory=lambda: list(DEFAULT_PULL_ALLOW))
    pull_reserve: ByteSize = setting(DEFAULT_PULL_RESERVE, ge=0)


@dataclass(frozen=True)
class GenerationDefaults:
    """Settings every engine has: what a request gets when it does not say."""

    model_path: str = ""
    model_id: str = ""
    max_tokens: int = setting(256, ge=1)
    threads: int = setting(4, ge=1)
    temperature: float = setting(0.7, ge=0.0, le=2.0)
    top_p: float = setting(0.9, gt=0.0, le=1.0)
    context_length: int = setting(2048, ge=16, le=MAX_CONTEXT_LENGTH)
    timeout_seconds: float = setting(300.0, gt=0.0)
    chat_template: str = "auto"


@dataclass(frozen=True)
class PicoLMSection(GenerationDefaults):
    binary: str = ""
    model_id: str = "picolm-local"
    prompt_cache: bool = True
    cache_dir: str = ""
    cache_max_bytes: ByteSize = setting(1024 * MIB, ge=0)


@dataclass(frozen=True)
class LlamaCppSection(GenerationDefaults):
    """The in-process llama.cpp engine; an empty ``model_path`` means the embedded model."""

    threads: int = setting(0, ge=0)  # 0: every core
    # Requests decoded together in one batch per step (each with its own context).
    parallel: int = setting(4, ge=1, le=64)
    # Reuse computed prompt states across requests (replies stay identical either way).
    prompt_cache: bool = True
    # Where prompt states go when the model is unloaded or the server stops, and come
    # back from ("": $XDG_CACHE_HOME/picolm-server/prompt-states, as picolm's).
    cache_dir: str = ""
    # Host memory for prompt states of slots about to be overwritten, and again the
    # states kept on disk per model; LRU eviction.
    cache_max_bytes: ByteSize = setting(256 * MIB, ge=0)
    # Flash attention: faster on long contexts, but then a reply can depend on what was
    # reused or batched beside it (its kernel's last bits depend on the batch's shape).
    flash_attention: bool = False
    # Replies that never depend on the requests decoded beside them: every generated
    # token is computed two rows at a time (about 1.5x the time per token alone).
    deterministic: bool = False
    # While no request runs or waits, compute the reply that just ended again as a
    # prompt, so that the conversation's next turn starts after it (with prompt_cache).
    warm_replies: bool = True
    # Grammar-bound replies (tool calls, json_schema): the text the grammar fixes is
    # written as a prompt chunk, not generated token by token (llguidance).
    jump_forward: bool = True
    # /v1/embeddings: a dedicated embedding GGUF; empty means the served model itself.
    embedding_model_path: str = ""


@dataclass(frozen=True)
class ResponsesSection:
    """The Responses API's store of past responses (api/responses/store.py)."""

    # The SQLite file; empty: $XDG_DATA_HOME/picolm-server/responses.sqlite3.
    store_path: str = ""
    # Past this total, the oldest stored responses are dropped.
    store_max_bytes: ByteSize = setting(64 * MIB, ge=4096)


# Where a JSON Schema written in the prompt becomes the reply's schema: "json_object"
# (when the request asks for a JSON object), "any" (also when the prompt asks for a
# ```json fenced block), or "off".
PromptSchemaSetting = Literal["json_object", "any", "off"]


@dataclass(frozen=True)
class StructuredOutputSection:
    """JSON replies (tool_calls/prompt_schema.py)."""

    prompt_schema: PromptSchemaSetting = "json_object"


@dataclass(frozen=True)
class LoggingSection:
    level: LogLevel = "info"
    format: Literal["text", "json"] = "text"
    output: str = "stdout"
    log_requests: bool = True


EngineChoice = Literal["auto", "picolm", "llama_cpp"]


@dataclass(frozen=True)
class ShelfSection:
    """The model shelf's defaults: how long an idle model stays loaded, and the memory
    that loaded models may take together."""

    # Seconds (or "5m", "1h"); 0 unloads as soon as the last request ends; negative:
    # never unloaded.
    keep_alive: Duration = setting(
        DEFAULT_KEEP_ALIVE_SECONDS, ge=KEEP_FOREVER, le=MAX_KEEP_ALIVE_SECONDS
    )
    # Bytes (or "6GiB"), or "auto": a share of the memory available at start
    # (picolm_server.shelf.budget).
    max_loaded_memory: MemoryBudget = setting(AUTO_MEMORY_BUDGET, ge=0)
    # Load a model even when it cannot fit the budget alone (machines with swap).
    allow_over_budget: bool = False


@dataclass(frozen=True)
class ModelEntry:
    """One model of the ``models:`` list. An option left out (None) is the engine's
    section's (``picolm:`` or ``llama_cpp:``); an option of the other engine is ignored,
    so that an ``engine: auto`` entry can carry both. Bounds here are the looser of the
    two sections'; the engine's own are checked when the entry meets its section."""

    id: str
    path: str
    aliases: list[str] = field(default_factory=list)
    engine: EngineChoice = "auto"
    keep_alive: Duration | None = setting(None, ge=KEEP_FOREVER, le=MAX_KEEP_ALIVE_SECONDS)
    preload: bool = False
    # Both engines' options.
    context_length: int | None = setting(None, ge=16, le=MAX_CONTEXT_LENGTH)
    threads: int | None = setting(None, ge=0)
    max_tokens: int | None = setting(None, ge=1)
    temperature: float | None = setting(None, ge=0.0, le=2.0)
    top_p: float | None = setting(None, gt=0.0, le=1.0)
    timeout_seconds: float | None = setting(None, gt=0.0)
    chat_template: str | None = None
    prompt_cache: bool | None = None
    cache_max_bytes: ByteSize | None = setting(None, ge=0)
    # llama.cpp's.
    parallel: int | None = setting(None, ge=1, le=64)
    flash_attention: bool | None = None
    deterministic: bool | None = None
    warm_replies: bool | None = None

    def given_options(self) -> dict[str, Any]:
        """The engine options this entry sets, by name."""
        return {
            name: value for name in ENTRY_OPTION_NAMES if (value := getattr(self, name)) is not None
        }


# The fields of an entry that are engine options (the rest say what and where it is).
ENTRY_OPTION_NAMES: tuple[str, ...] = tuple(
    f.name
    for f in dataclasses.fields(ModelEntry)
    if f.name not in ("id", "path", "aliases", "engine", "keep_alive", "preload")
)


@dataclass(frozen=True)
class Settings:
    """The whole configuration. Build it with :func:`load_settings`."""

    engine: EngineChoice = "auto"
    server: ServerSection = field(default_factory=ServerSection)
    picolm: PicoLMSection = field(default_factory=PicoLMSection)
    llama_cpp: LlamaCppSection = field(default_factory=LlamaCppSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    responses: ResponsesSection = field(default_factory=ResponsesSection)
    structured_output: StructuredOutputSection = field(default_factory=StructuredOutputSection)
    # The model shelf. Empty: $XDG_DATA_HOME/picolm-server/models, where ``pull`` puts
    # models (picolm_server.models.default_models_dir).
    models_dir: str = ""
    models: list[ModelEntry] = field(default_factory=list)
    shelf: ShelfSection = field(default_factory=ShelfSection)

    def resolved_engine(self) -> Literal["picolm", "llama_cpp"]:
        """``auto`` means PicoLM when its binary and model are configured, else llama.cpp."""
        if self.engine != "auto":
            return self.engine
        if self.picolm.binary and self.picolm.model_path:
            return "picolm"
        return "llama_cpp"

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from a mapping of sections (as a file gives them), checked; raises
        :class:`~.config_check.SettingsInvalid` naming every problem."""
        return validate_settings(cls, values)


def _deep_update(mapping: Mapping[str, Any], updating: Mapping[str, Any]) -> dict[str, Any]:
    """``mapping`` with ``updating``'s values, mappings merged key by key (pydantic's
    ``deep_update``, which pydantic-settings merges its sources with)."""
    updated = dict(mapping)
    for key, value in updating.items():
        if key in updated and isinstance(updated[key], dict) and isinstance(value, dict):
            updated[key] = _deep_update(updated[key], value)
        else:
            updated[key] = value
    return updated


def merge_sources(
    overrides: Mapping[str, Any], environment: Mapping[str, Any], file: Mapping[str, Any]
) -> dict[str, Any]:
    """The values to validate, as pydantic-settings builds them from its sources in this
    order of precedence: each source's values are merged under the ones above it."""
    return _deep_update(file, _deep_update(environment, overrides))


SETTING_NAMES: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(Settings))


def names_a_setting(variable: str) -> bool:
    """Whether the environment variable can set a value: ``PICOLM_<FIELD>`` or
    ``PICOLM_<FIELD>__...`` for a field of :class:`Settings`, in any case
    (``PICOLM_CONFIG``, which names the file, is not one)."""
    name = variable.lower()
    prefix = ENV_PREFIX.lower()
    if not name.startswith(prefix):
        return False
    rest = name[len(prefix) :]
    return any(
        rest == name or rest.startswith(name + ENV_NESTED_DELIMITER) for name in SETTING_NAMES
    )


def environment_values(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The values the ``PICOLM_*`` environment variables set, decoded by pydantic-settings
    (imported only when one is set)."""
    if not any(names_a_setting(variable) for variable in environ):
        return {}
    from .env import read_environment

    return read_environment()


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse the YAML file; an empty file is an empty configuration."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}: {problem}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    return data


def load_settings(
    config_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build the settings: ``overrides`` (flags) > environment > the file > defaults."""
    file_values = read_config_file(config_path) if config_path else {}
    source = f"config file {config_path}" if config_path else "configuration"
    values = merge_sources(overrides or {}, environment_values(), file_values)
    try:
        settings = Settings.from_values(values)
    except SettingsInvalid as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if settings.server.model_admin == "key" and not settings.server.api_key:
        raise ConfigError(
            f"{source}: server.model_admin: 'key' needs server.api_key (the key to present)"
        )
    return settings
