"""The ``responses:`` configuration section."""

from __future__ import annotations

from pathlib import Path

import pytest

from picolm_server.config.settings import ConfigError, load_settings


def test_defaults_and_a_configured_store(tmp_path: Path) -> None:
    assert load_settings().responses.store_path == ""
    assert load_settings().responses.store_max_bytes == 64 * 1024 * 1024
    config = tmp_path / "config.yaml"
    config.write_text("responses:\n  store_path: /srv/r.sqlite3\n  store_max_bytes: 8MiB\n")
    section = load_settings(config).responses
    assert section.store_path == "/srv/r.sqlite3"
    assert section.store_max_bytes == 8 * 1024 * 1024


def test_a_too_small_limit_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("responses:\n  store_max_bytes: 10\n")
    with pytest.raises(ConfigError, match=r"responses\.store_max_bytes"):
        load_settings(config)
