"""The mark a pull leaves beside its file: it names that file only, not a file put in
its place since, nor a link of the same name."""

from __future__ import annotations

import os
from pathlib import Path

from picolm_server.models.pulled import mark_pulled, marker_of, remove_pulled, was_pulled


def test_a_marked_file_is_pulled_and_is_removed_with_its_mark(tmp_path: Path) -> None:
    file = tmp_path / "tiny.gguf"
    file.write_bytes(b"GGUF" + bytes(60))
    assert not was_pulled(file)
    mark_pulled(file, "https://huggingface.co/o/r/resolve/main/tiny.gguf")
    assert marker_of(file).name == ".tiny.gguf.pulled"
    assert was_pulled(file)
    remove_pulled(file)
    assert list(tmp_path.iterdir()) == []


def test_a_file_put_in_the_place_of_a_pulled_one_is_not_pulled(tmp_path: Path) -> None:
    file = tmp_path / "tiny.gguf"
    file.write_bytes(b"GGUF" + bytes(60))
    mark_pulled(file, "https://example.org/tiny.gguf")
    replacement = tmp_path / "mine.gguf"
    replacement.write_bytes(b"GGUF" + bytes(60))  # the same size, another file
    os.replace(replacement, file)
    assert not was_pulled(file)


def test_a_link_in_the_place_of_a_pulled_file_is_not_pulled(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.gguf"
    elsewhere.write_bytes(b"GGUF" + bytes(60))
    file = tmp_path / "tiny.gguf"
    file.write_bytes(b"GGUF" + bytes(60))
    mark_pulled(file, "https://example.org/tiny.gguf")
    file.unlink()
    file.symlink_to(elsewhere)
    assert not was_pulled(file)
    mark_pulled(file, "https://example.org/tiny.gguf")  # a link is never marked
    assert not was_pulled(file)


def test_a_damaged_mark_marks_nothing(tmp_path: Path) -> None:
    file = tmp_path / "tiny.gguf"
    file.write_bytes(b"GGUF")
    marker_of(file).write_text("{not json")
    assert not was_pulled(file)
    marker_of(file).write_text("[1, 2]")
    assert not was_pulled(file)
