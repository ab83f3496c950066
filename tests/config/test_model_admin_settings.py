"""The model administration settings: ``server.model_admin``, ``server.pull_allow``
(URL prefixes, each naming its host whole) and ``server.pull_reserve``."""

from __future__ import annotations

from pathlib import Path

import pytest

from picolm_server.config.settings import ConfigError, Settings, load_settings


def test_the_defaults_are_loopback_hugging_face_and_a_gibibyte() -> None:
    server = Settings().server
    assert server.model_admin == "loopback"
    assert server.pull_allow == ["https://huggingface.co/"]
    assert server.pull_reserve == 1024**3


def test_a_file_sets_them(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "server:\n  model_admin: any\n  pull_reserve: 2GiB\n"
        "  pull_allow: http://192.168.1.5:8000/models/, https://huggingface.co/\n"
    )
    server = load_settings(config).server
    assert server.model_admin == "any" and server.pull_reserve == 2 * 1024**3
    assert server.pull_allow == ["http://192.168.1.5:8000/models/", "https://huggingface.co/"]


@pytest.mark.parametrize(
    "prefix",
    [
        "https://huggingface.co",  # the host not closed by a slash
        "huggingface.co/",
        "ftp://host/",
        "https://user@host/",
        "https:///path/",
        "https://host/?q=1",
    ],
)
def test_a_prefix_that_does_not_name_its_host_whole_is_refused(tmp_path: Path, prefix: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  pull_allow: [{prefix!r}]\n")
    with pytest.raises(ConfigError, match=r"server\.pull_allow: .*not a URL prefix"):
        load_settings(config)


def test_model_admin_takes_its_four_modes_only(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  model_admin: everyone\n")
    with pytest.raises(ConfigError, match=r"server\.model_admin"):
        load_settings(config)
    config.write_text("server:\n  model_admin: key\n  api_key: sk-1\n")
    assert load_settings(config).server.model_admin == "key"
