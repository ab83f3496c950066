"""The models directory: which of its files are models, and its id for each."""

from __future__ import annotations

from pathlib import Path

import pytest

from picolm_server.config.settings import ConfigError, Settings
from picolm_server.models import default_models_dir
from picolm_server.shelf.models_dir import directory_models, model_id_of, models_dir_of


def test_the_default_directory_is_where_pull_puts_models(_own_data_home: Path) -> None:
    assert models_dir_of(Settings()) == default_models_dir()
    assert default_models_dir() == _own_data_home / "picolm-server" / "models"
    # Not made yet (the first pull makes it): an empty shelf, not an error.
    assert directory_models(Settings()) == (default_models_dir(), [])


def test_its_gguf_files_by_name(tmp_path: Path) -> None:
    for name in ["b.gguf", "a.gguf", ".hidden.gguf", ".c.gguf.part", "x.GGUF", ".gguf", "t.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.gguf").mkdir()
    (tmp_path / "sub.gguf" / "inner.gguf").write_bytes(b"")
    (tmp_path / "link.gguf").symlink_to(tmp_path / "nowhere")
    directory, files = directory_models(Settings(models_dir=str(tmp_path)))
    assert directory == tmp_path
    # Links and directories are listed by name; whether each is a file is the catalog's.
    assert [file.name for file in files] == ["a.gguf", "b.gguf", "link.gguf", "sub.gguf"]
    assert [model_id_of(file) for file in files] == ["a", "b", "link", "sub"]


def test_a_configured_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        directory_models(Settings(models_dir=str(tmp_path / "absent")))
    assert str(caught.value) == f"models_dir: {tmp_path / 'absent'}: no such directory"
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^models_dir: .*: not a directory$"):
        directory_models(Settings(models_dir=str(tmp_path / "file")))


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models_dir_of(Settings(models_dir="~/models")) == tmp_path / "models"
