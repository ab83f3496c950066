"""The GGUF metadata reader: the format's constants, and what it reads."""

from __future__ import annotations

from pathlib import Path

import gguf

from picolm_server.gguf_metadata import GGUF_MAGIC, TOKENS_KEY, GGUFValueType, read_gguf_metadata
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
