"""Configuration: file layout, sizes, precedence (flags > env > file > defaults), and
one-line errors that name the key."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from picolm_server.config.settings import (
    AUTO_MEMORY_BUDGET,
    ENTRY_OPTION_NAMES,
    KEEP_FOREVER,
    ConfigError,
    LlamaCppSection,
    PicoLMSection,
    load_settings,
    parse_duration,
    parse_size,
)


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.server.port == 8080
    assert settings.server.max_concurrent == 0
    assert settings.server.api_key == ""
    assert settings.picolm.max_tokens == 256


def test_go_server_layout_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "server": {"host": "127.0.0.1", "port": 9000, "api_key": "k", "max_body": "1MiB"},
            "picolm": {"binary": "/bin/picolm", "model_path": "/m.gguf", "threads": 2},
            "logging": {"level": "DEBUG", "format": "json"},
        },
    )
    settings = load_settings(path)
    assert settings.server.port == 9000 and settings.server.max_body == 1024 * 1024
    assert settings.picolm.threads == 2
    assert settings.logging.level == "debug"
    assert settings.resolved_engine() == "picolm"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4MiB", 4 * 1024 * 1024),
        ("512k", 512_000),
        ("100", 100),
        (2048, 2048),
        ("1.5 GB", 1_500_000_000),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", True, "4 parsecs", None])
def test_parse_size_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_precedence_init_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, {"server": {"port": 1000, "max_queue": 3}})
    assert load_settings(path).server.port == 1000
    monkeypatch.setenv("PICOLM_SERVER__PORT", "2000")
    settings = load_settings(path)
    assert settings.server.port == 2000
    assert settings.server.max_queue == 3  # the file's other keys still count
    assert load_settings(path, {"server": {"port": 3000}}).server.port == 3000


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"server": {"portt": 1}}, "server.portt"),
        ({"server": {"port": "eighty"}}, "server.port"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"max_body": "huge"}}, "server.max_body"),
        ({"picolm": {"temperature": 9}}, "picolm.temperature"),
        ({"logging": {"level": "loud"}}, "logging.level"),
        ({"engine": "gpt"}, "engine"),
        ({"nonsense": {}}, "nonsense"),
        ("server: [unclosed", "line 1"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_errors_are_one_line_naming_the_key(tmp_path: Path, data: object, names: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "\n" not in message
    assert names in message
    assert str(path) in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.yaml")


def test_empty_file_is_an_empty_configuration(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")).server.port == 8080


def test_env_errors_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICOLM_SERVER__MAX_CONCURRENT", "-1")
    with pytest.raises(ConfigError, match=r"server\.max_concurrent"):
        load_settings()


def test_browser_and_metrics_keys(tmp_path: Path) -> None:
    defaults = load_settings().server
    assert defaults.cors_origins == []
    assert (defaults.metrics_public, defaults.ui, defaults.sse_ping_seconds) == (False, True, 10.0)
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "server": {
                    "cors_origins": "http://a.example, http://b.example",
                    "metrics_public": True,
                    "ui": False,
                    "sse_ping_seconds": 2.5,
                }
            }
        )
    )
    server = load_settings(path).server
    assert server.cors_origins == ["http://a.example", "http://b.example"]
    assert (server.metrics_public, server.ui, server.sse_ping_seconds) == (True, False, 2.5)
    assert load_settings(overrides={"server": {"cors_origins": ["*"]}}).server.cors_origins == ["*"]
    with pytest.raises(ConfigError, match=r"server\.sse_ping_seconds"):
        load_settings(overrides={"server": {"sse_ping_seconds": -1}})


def test_prompt_schema_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().structured_output.prompt_schema == "json_object"
    path = write(tmp_path, {"structured_output": {"prompt_schema": "any"}})
    assert load_settings(path).structured_output.prompt_schema == "any"
    monkeypatch.setenv("PICOLM_STRUCTURED_OUTPUT__PROMPT_SCHEMA", "off")
    assert load_settings(path).structured_output.prompt_schema == "off"
    monkeypatch.setenv("PICOLM_STRUCTURED_OUTPUT__PROMPT_SCHEMA", "sometimes")
    with pytest.raises(ConfigError, match=r"structured_output\.prompt_schema"):
        load_settings(path)


def test_the_example_file_is_the_defaults() -> None:
    # config.example.yaml lists every key with its default.
    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    assert load_settings(example) == load_settings()


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (300, 300.0),
        (2.5, 2.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1d", 86400.0),
        ("90", 90.0),
        (" 2M ", 120.0),
        ("0", 0.0),
        (0, 0.0),
        (-1, KEEP_FOREVER),
        ("-5m", KEEP_FOREVER),
        ("-0.5", KEEP_FOREVER),
        ("-inf", KEEP_FOREVER),
    ],
)
def test_parse_duration(given: object, seconds: float) -> None:
    assert parse_duration(given) == seconds


@pytest.mark.parametrize("bad", ["soon", "5 minutes", "m", "5x", "1h 30m", "", "nan", True, None])
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_shelf_defaults() -> None:
    settings = load_settings()
    assert settings.models_dir == "" and settings.models == []
    assert settings.shelf.keep_alive == 300.0
    assert settings.shelf.max_loaded_memory == AUTO_MEMORY_BUDGET
    assert settings.shelf.allow_over_budget is False


def test_a_models_list(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "models_dir": "~/models",
            "shelf": {"keep_alive": "10m", "max_loaded_memory": "6GiB"},
            "models": [
                {"id": "tiny", "path": "/m/tiny.gguf", "aliases": ["chat"], "engine": "picolm"},
                {"id": "smol", "path": "/m/smol.gguf", "keep_alive": -1, "parallel": 2},
            ],
        },
    )
    settings = load_settings(path)
    assert settings.models_dir == "~/models"
    assert (settings.shelf.keep_alive, settings.shelf.max_loaded_memory) == (600.0, 6 * 1024**3)
    tiny, smol = settings.models
    assert (tiny.id, tiny.aliases, tiny.engine) == ("tiny", ["chat"], "picolm")
    assert tiny.keep_alive is None
    assert tiny.given_options() == {}
    assert (smol.engine, smol.keep_alive, smol.preload) == ("auto", KEEP_FOREVER, False)
    assert smol.given_options() == {"parallel": 2}


def test_an_entrys_options_are_the_sections_fields() -> None:
    """An entry's options mean what the section's fields of the same name mean."""
    sections = {f.name: f for s in (PicoLMSection, LlamaCppSection) for f in fields(s)}
    for name in ENTRY_OPTION_NAMES:
        assert name in sections, name
    assert "model_path" not in ENTRY_OPTION_NAMES and "id" not in ENTRY_OPTION_NAMES


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"models": [{"id": "a", "path": "/a"}, {"id": "b"}, {"path": "/c"}]}, "models[1].path"),
        ({"models": [{"id": "a", "path": "/a"}, {"id": "c"}, {"path": "/c"}]}, "models[2].id"),
        ({"models": [{"id": "a", "path": "/a", "engine": "gpu"}]}, "models[0].engine"),
        ({"models": [{"id": "a", "path": "/a", "keep_alive": "soon"}]}, "models[0].keep_alive"),
        ({"models": [{"id": "a", "path": "/a", "keep_alive": 1e9}]}, "models[0].keep_alive"),
        ({"models": [{"id": "a", "path": "/a", "context_length": 8}]}, "models[0].context_length"),
        ({"models": [{"id": "a", "path": "/a", "context_length": 1 << 21}]}, "models[0].context"),
        ({"models": [{"id": "a", "path": "/a", "nonsense": 1}]}, "models[0].nonsense"),
        ({"models": [{"id": "a", "path": "/a", "aliases": [1]}]}, "models[0].aliases[0]"),
        ({"models": ["a.gguf"]}, "models[0]"),
        ({"models": {"id": "a", "path": "/a"}}, "models"),
        ({"models_dir": ["/a"]}, "models_dir"),
        ({"shelf": {"keep_alive": "5 minutes"}}, "shelf.keep_alive"),
        ({"shelf": {"keep_alive": 31 * 86400}}, "shelf.keep_alive"),
        ({"shelf": {"max_loaded_memory": "all of it"}}, "shelf.max_loaded_memory"),
        ({"shelf": {"max_loaded_memory": -1}}, "shelf.max_loaded_memory"),
        ({"shelf": {"budget": 1}}, "shelf.budget"),
        ({"picolm": {"context_length": 1 << 21}}, "picolm.context_length"),
    ],
)
def test_shelf_errors_are_one_line_naming_the_key(tmp_path: Path, data: object, names: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "\n" not in message and names in message


def test_shelf_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICOLM_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("PICOLM_SHELF__KEEP_ALIVE", "-1")
    monkeypatch.setenv("PICOLM_MODELS", '[{"id": "a", "path": "/a.gguf", "aliases": ["x"]}]')
    settings = load_settings()
    assert settings.models_dir == "/srv/models" and settings.shelf.keep_alive == KEEP_FOREVER
    assert [(m.id, m.path, m.aliases) for m in settings.models] == [("a", "/a.gguf", ["x"])]
