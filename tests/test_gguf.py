"""The GGUF metadata reader: the format's constants, and what it reads."""

from __future__ import annotations

import mmap
from pathlib import Path

import gguf
import pytest

from picolm_server.gguf import (
    GGUF_MAGIC,
    TOKENS_KEY,
    GGUFValueType,
    _Cursor,
    read_gguf_metadata,
)
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf


def test_constants_are_the_gguf_formats() -> None:
    assert GGUF_MAGIC == gguf.GGUF_MAGIC
    assert {t.name: t.value for t in GGUFValueType} == {t.name: t.value for t in gguf.GGUFValueType}


def test_reads_what_the_gguf_package_reads(tmp_path: Path) -> None:
    path = build_tiny_llama_gguf(tmp_path / "m.gguf", chat_template="{{ x }}")
    ours = read_gguf_metadata(path, arrays=frozenset({"tokenizer.ggml.tokens"}))
    reader = gguf.GGUFReader(path)
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if key in ours.array_lengths:
            assert ours.array_lengths[key] == len(field.data)
        elif field.types[0] == gguf.GGUFValueType.ARRAY:
            assert ours.values[key] == [field.contents(i) for i in range(len(field.data))]
        else:
            assert ours.values[key] == field.contents()


def test_without_the_vocabulary_the_special_tokens_are_still_known(tmp_path: Path) -> None:
    path = build_tiny_llama_gguf(tmp_path / "m.gguf")
    full = read_gguf_metadata(path, arrays=frozenset({TOKENS_KEY}))
    light = full.without_vocabulary()
    assert TOKENS_KEY not in light.values
    assert light.array_lengths[TOKENS_KEY] == len(full.values[TOKENS_KEY])
    assert {key: value for key, value in full.values.items() if key != TOKENS_KEY} == light.values
    for name in ("bos", "eos", "unk", "pad"):
        assert light.token_text(name) == full.token_text(name)
    assert light.token_text("eos") not in (None, "")
    # A name the file does not have stays unknown, as with the whole vocabulary.
    assert light.token_text("mask") is None is full.token_text("mask")


def test_a_string_array_reads_as_the_list_it_stands_for() -> None:
    strings = ["<unk>", "<s>", "", "a", "ab", "b\u00e9", "<|im_start|>", "x<|im_start|>"]
    raw = b"".join(
        len(data).to_bytes(8, "little") + data
        for data in [*(item.encode() for item in strings), b"\xff\xfe"]
    )
    expected = [*strings, "\ufffd\ufffd"]
    cursor = _Cursor(mmap_of(raw), Path("m.gguf"))
    array = cursor.string_array(len(expected))
    assert array == expected and list(array) == expected and len(array) == len(expected)
    assert array[-1] == expected[-1] and array[1:3] == expected[1:3]
    for probe in [*expected, "im_start", "<|im_start", "ab\u0000", "c", "\ufffd", "\u00e9"]:
        assert (probe in array) == (probe in expected), probe
    with pytest.raises(IndexError):
        array[len(expected)]


def mmap_of(data: bytes) -> mmap.mmap:
    buffer = mmap.mmap(-1, len(data))
    buffer.write(data)
    return buffer
