"""A model file is checked before anything loads it: missing, not a file, a text file
named .gguf, a truncated or hostile GGUF are each one clear line, never a crash."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from picolm_server.gguf import GGMLType, GGUFValueType
from picolm_server.shelf.model_file import ModelFileError, check_model_file
from tests.shelf.conftest import write_model
from tests.support.gguf_bytes import Array, gguf_model_bytes, llama_kvs


def refusal(path: Path) -> str:
    with pytest.raises(ModelFileError) as caught:
        check_model_file(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_whole_file(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf")
    checked = check_model_file(path)
    assert checked.size_bytes == path.stat().st_size
    reader = gguf.GGUFReader(path)
    assert checked.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors) > 0
    assert checked.metadata.architecture == "llama"


def test_files_that_cannot_be_served(tmp_path: Path) -> None:
    assert refusal(tmp_path / "absent.gguf").endswith("no such file")
    (tmp_path / "dir.gguf").mkdir()
    assert refusal(tmp_path / "dir.gguf").endswith("not a file")
    text = tmp_path / "text.gguf"
    text.write_text("a text file, not a model\n")
    assert "not a GGUF file" in refusal(text)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert "not a GGUF file" in refusal(empty)
    whole = write_model(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) - 100])
    assert "truncated" in refusal(cut)
    broken = tmp_path / "broken.gguf"
    broken.symlink_to(tmp_path / "nowhere.gguf")
    assert refusal(broken).endswith("no such file")


def test_a_link_is_followed(tmp_path: Path) -> None:
    target = write_model(tmp_path / "target.gguf")
    link = tmp_path / "link.gguf"
    link.symlink_to(target)
    assert check_model_file(link).size_bytes == target.stat().st_size


def test_a_real_model_cut_short(gemma_head: Path) -> None:
    """Gemma 3 270M's first part: the metadata whole, three quarters of the data gone."""
    assert "truncated GGUF" in refusal(gemma_head)


def test_head_counts_given_per_layer_are_read(tmp_path: Path) -> None:
    per_layer = ("llama.attention.head_count_kv", GGUFValueType.ARRAY)
    path = write_model(
        tmp_path / "m.gguf",
        kv_heads=None,
        extra=[(*per_layer, Array(GGUFValueType.UINT32, [2, 0]))],
    )
    values = check_model_file(path).metadata.values
    assert list(values["llama.attention.head_count_kv"]) == [2, 0]


WHOLE_MODEL = gguf_model_bytes(llama_kvs(), [("a", (256, 4), GGMLType.Q4_K), ("b", (64,), 0)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(WHOLE_MODEL) - 1), st.binary(min_size=1, max_size=8)),
        min_size=1,
        max_size=4,
    ),
    cut=st.integers(0, len(WHOLE_MODEL)),
)
def test_a_damaged_file_is_refused_or_read_never_a_crash(
    edits: list[tuple[int, bytes]], cut: int
) -> None:
    data = bytearray(WHOLE_MODEL)
    for at, patch in edits:
        data[at : at + len(patch)] = patch
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "m.gguf"
        path.write_bytes(bytes(data[:cut]))
        try:
            checked = check_model_file(path)
        except ModelFileError as exc:
            assert "\n" not in str(exc)
            return
        # Read: then every tensor's data lies inside the file.
        table = checked.metadata.tensor_table
        assert table is not None
        assert all(
            table.data_offset + t.offset + t.n_bytes <= checked.size_bytes for t in table.tensors
        )
