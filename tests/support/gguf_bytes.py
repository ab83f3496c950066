"""GGUF files written byte by byte, for the reader's tests: any key, value type, count or
tensor header, including the malformed ones a library writer refuses to make."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gguf

from picolm_server.gguf import GGUF_MAGIC, GGUFValueType

# The item formats of the gguf package's own writer (little-endian), by value type.
_FORMATS = {
    GGUFValueType(int(value_type)): "<" + code
    for value_type, code in gguf.GGUFWriter._simple_value_packing.items()
}


def string(text: str | bytes) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


@dataclass(frozen=True)
class Array:
    """An array value: its item type and items (each encoded as that type)."""

    item_type: GGUFValueType
    items: Sequence[Any]


def value(value_type: GGUFValueType, item: Any) -> bytes:
    if value_type == GGUFValueType.STRING:
        return string(item)
    if value_type == GGUFValueType.ARRAY:
        assert isinstance(item, Array)
        head = struct.pack("<IQ", item.item_type, len(item.items))
        return head + b"".join(value(item.item_type, part) for part in item.items)
    return struct.pack(_FORMATS[value_type], item)


def gguf_bytes(
    kvs: Sequence[tuple[str, GGUFValueType, Any]],
    tensors: Sequence[tuple[str, Sequence[int]]] = (),
    *,
    version: int = 3,
) -> bytes:
    """A GGUF file's head: the header, the key/values, the tensor infos (F32, offset 0)."""
    out = [struct.pack("<IIQQ", GGUF_MAGIC, version, len(tensors), len(kvs))]
    for key, value_type, item in kvs:
        out.append(string(key) + struct.pack("<I", value_type) + value(value_type, item))
    for name, dims in tensors:
        out.append(string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, 0, 0))
    return b"".join(out)
