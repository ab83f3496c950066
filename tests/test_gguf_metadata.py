"""The GGUF metadata reader: the format's constants, and what it reads."""

from __future__ import annotations

from pathlib import Path

import gguf

from picolm_server.gguf_metadata import GGUF_MAGIC, GGUFValueType, read_gguf_metadata
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
