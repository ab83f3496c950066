"""Settings from the environment, the file and the flags are what they were when the
settings class was pydantic-settings' ``BaseSettings`` with the file as a source: the
reference below is that class (a pydantic model built from the settings dataclasses),
and the two must agree on every case (the same values, or errors at the same keys with
the same messages)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from picolm_server.config.check import SettingsInvalid
from picolm_server.config.env import pydantic_model
from picolm_server.config.settings import (
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    Settings,
    environment_values,
    merge_sources,
    names_a_setting,
)


def reference(file_values: dict[str, Any], overrides: dict[str, Any]) -> Any:
    class ReferenceBase(BaseSettings):
        model_config = SettingsConfigDict(
            env_prefix=ENV_PREFIX,
            env_nested_delimiter=ENV_NESTED_DELIMITER,
            extra="forbid",
            validate_default=True,
        )

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                env_settings,
                InitSettingsSource(settings_cls, init_kwargs=file_values),
            )

    return pydantic_model(Settings, ReferenceBase)(**overrides)


def ours_now(file_values: dict[str, Any], overrides: dict[str, Any]) -> Settings:
    """What load_settings validates, from the same sources."""
    return Settings.from_values(merge_sources(overrides, environment_values(), file_values))


def key_of(loc: tuple[str | int, ...]) -> str:
    """A pydantic error's location as ours name keys: ``models[2].path``."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else part
    return key


def outcome(build: Any) -> Any:
    """The values built, or the error: its class, and each problem's key and message
    (pydantic's words; ours add the value given, and say "unknown key" for its
    "Extra inputs are not permitted")."""
    try:
        built = build()
    except ValidationError as exc:
        return (
            "invalid",
            sorted(
                (
                    key_of(e["loc"]),
                    "unknown key" if e["type"] == "extra_forbidden" else e["msg"],
                )
                for e in exc.errors()
            ),
        )
    except SettingsInvalid as exc:
        problems = [(key, message.split(" (got ")[0]) for key, message in exc.problems]
        return ("invalid", sorted(problems))
    except SettingsError as exc:
        return ("settings error", str(exc))
    if isinstance(built, Settings):
        return ("ok", dataclasses.asdict(built))
    return ("ok", built.model_dump())


ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"PICOLM_CONFIG": "/no/such/file.yaml", "PICOLM_OTHER": "1"},
    {"PICOLM_SERVER__PORT": "2000"},
    {"picolm_server__port": "2001", "Picolm_Server__Host": "127.0.0.1"},
    {"PICOLM_SERVER": '{"port": 1, "host": "x"}', "PICOLM_SERVER__PORT": "5"},
    {"PICOLM_SERVER": "not json"},
    {"PICOLM_SERVER": "[1]"},
    {"PICOLM_SERVER": ""},
    {"PICOLM_SERVER__PORT": ""},
    {"PICOLM_SERVER__CORS_ORIGINS": '["https://a", "https://b"]'},
    {"PICOLM_SERVER__CORS_ORIGINS": "https://a, https://b"},
    {"PICOLM_SERVER__BOGUS": "1"},
    {"PICOLM_SERVER__A__B": "1"},
    {"PICOLM_ENGINE": "picolm"},
    {"PICOLM_ENGINE": "nope"},
    {"PICOLM_LOGGING__LEVEL": "DEBUG", "PICOLM_LOGGING__LOG_REQUESTS": "false"},
    {"PICOLM_SERVER__MAX_BODY": "4MiB", "PICOLM_PICOLM__CACHE_MAX_BYTES": "1k"},
    {"PICOLM_SERVER__METRICS_PUBLIC": "yes", "PICOLM_SERVER__MAX_CONCURRENT": "0"},
    {"PICOLM_LLAMA_CPP__EMBEDDING_MODEL_PATH": "/e.gguf", "PICOLM_RESPONSES__STORE_PATH": "/s"},
    {"PICOLM_PICOLM": '{"binary": "/b", "threads": "2"}', "PICOLM_PICOLM__THREADS": "3"},
    {"PICOLM_BOGUS": "1", "PICOLM_ENGINEX": "picolm"},
    # The model shelf.
    {"PICOLM_MODELS_DIR": "/srv/models", "PICOLM_SHELF__KEEP_ALIVE": "1h30m"},
    {"PICOLM_SHELF__MAX_LOADED_MEMORY": "6GiB", "PICOLM_SHELF__ALLOW_OVER_BUDGET": "yes"},
    {"PICOLM_SHELF__KEEP_ALIVE": "-1", "PICOLM_SHELF__MAX_LOADED_MEMORY": "Auto"},
    {"PICOLM_SHELF__KEEP_ALIVE": "forever", "PICOLM_SHELF__MAX_LOADED_MEMORY": "-5"},
    {"PICOLM_MODELS": '[{"id": "a", "path": "/a.gguf", "aliases": ["x"], "keep_alive": "5m"}]'},
    {"PICOLM_MODELS": '[{"id": "a"}, 3, {"id": "b", "path": "/b", "threads": "many"}]'},
    {"PICOLM_MODELS": '{"id": "a", "path": "/a.gguf"}', "PICOLM_SHELF": '{"keep_alive": 0}'},
]
FILES: list[dict[str, Any]] = [
    {},
    {"server": {"port": 1, "host": "f", "cors_origins": "*"}, "engine": "llama_cpp"},
    {"server": "x", "logging": {"level": "INFO"}},
    {"picolm": {"binary": "/f", "threads": 1}, "unknown": 1},
    # Lax conversions and bounds, as pydantic applies them.
    {
        "server": {
            "port": "80",
            "max_queue": 3.0,
            "max_connections": 2.5,
            "metrics_public": "on",
            "ui": 0,
            "header_timeout": 0,
            "body_timeout": "1e3",
            "cors_origins": ("a", 1),
            "max_body": "1k",
        },
        "picolm": {"temperature": "2.5", "top_p": True, "threads": " 3 ", "prompt_cache": 2},
        "llama_cpp": {"parallel": 65, "cache_max_bytes": "lots", "model_path": 5},
        "logging": {"level": 5, "format": "JSON", "log_requests": "maybe"},
        "responses": [],
    },
    {
        "server": {"port": "8_080", "sse_ping_seconds": "inf", "cors_origins": ["x"]},
        "picolm": {"context_length": "16", "timeout_seconds": "nan", "max_tokens": "2.0"},
        "logging": {"level": "WARNING"},
    },
    # The model shelf: entries, their options (None is the section's), the defaults.
    {
        "models_dir": "~/models",
        "models": [
            {"id": "tiny", "path": "/m/tiny.gguf", "aliases": ["chat", "t"], "engine": "picolm"},
            {
                "id": "smol",
                "path": "/m/smol.gguf",
                "keep_alive": "30s",
                "preload": "true",
                "context_length": "4096",
                "threads": 0,
                "parallel": 2,
                "temperature": None,
                "cache_max_bytes": "64MiB",
                "chat_template": "chatml",
            },
            {"id": "x", "path": "/x", "keep_alive": -7, "flash_attention": "off"},
        ],
        "shelf": {"keep_alive": "2h", "max_loaded_memory": "6GiB", "allow_over_budget": 1},
    },
    {
        "models_dir": 5,
        "models": [
            {"id": "a"},
            "b",
            {"id": "c", "path": "/c", "engine": "gpu", "aliases": "c2", "keep_alive": "soon"},
            {"id": "d", "path": "/d", "context_length": 1 << 21, "parallel": 0, "bogus": 1},
            {"id": 7, "path": None, "keep_alive": 1e9, "top_p": 0, "preload": "maybe"},
        ],
        "shelf": {"keep_alive": "5 minutes", "max_loaded_memory": "lots", "extra": 1},
    },
    {
        "models": {"id": "a", "path": "/a"},
        "shelf": {"keep_alive": "nan", "max_loaded_memory": -1},
        "picolm": {"context_length": 2_000_000},
    },
    {"models": [], "shelf": {"keep_alive": "1h30m15.5s", "max_loaded_memory": 123}},
]
OVERRIDES: list[dict[str, Any]] = [
    {},
    {"server": {"port": 3}},
    {"engine": "picolm"},
    {"models_dir": "/flag", "shelf": {"keep_alive": "10m", "max_loaded_memory": "1GiB"}},
]


@pytest.mark.parametrize("environment", ENVIRONMENTS, ids=lambda e: json.dumps(e)[:60])
def test_the_sources_merge_and_decode_as_pydantic_settings_did(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in os.environ if name.lower().startswith("picolm")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    for file_values, overrides in itertools.product(FILES, OVERRIDES):
        ours = outcome(functools.partial(ours_now, file_values, overrides))
        theirs = outcome(functools.partial(reference, file_values, overrides))
        assert ours == theirs, (file_values, overrides)


def test_only_variables_that_name_a_setting_count() -> None:
    assert names_a_setting("PICOLM_SERVER__PORT")
    assert names_a_setting("picolm_engine")
    assert names_a_setting("PICOLM_LOGGING")
    assert not names_a_setting("PICOLM_CONFIG")
    assert not names_a_setting("PICOLM_ENGINEX")
    assert not names_a_setting("PICOLM_BINARY")
    assert not names_a_setting("OTHER_SERVER__PORT")


def test_pydantic_settings_is_imported_only_for_such_a_variable() -> None:
    program = (
        "import sys\n"
        "from picolm_server.config.settings import load_settings\n"
        "load_settings()\n"
        "print('pydantic_settings' in sys.modules)\n"
    )
    environ = {
        name: value for name, value in os.environ.items() if not name.lower().startswith("picolm")
    }

    def loaded(extra: dict[str, str]) -> str:
        result = subprocess.run(
            [sys.executable, "-c", program],
            env={**environ, **extra},
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip()

    assert loaded({"PICOLM_CONFIG": ""}) == "False"
    assert loaded({"PICOLM_SERVER__PORT": "2000"}) == "True"
