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


# Bytes per block and values per block of each tensor type, from the gguf package (not
# from the reader under test).
def tensor_bytes(dims: Sequence[int], tensor_type: int) -> int:
    block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(tensor_type)]
    elements = 1
    for dim in dims:
        elements *= dim
    return elements // block * block_bytes


def gguf_model_bytes(
    kvs: Sequence[tuple[str, GGUFValueType, Any]],
    tensors: Sequence[tuple[str, Sequence[int], int]],
    *,
    alignment: int = 32,
) -> bytes:
    """A whole GGUF file: the head, then each tensor's data (zeros) at aligned offsets,
    as the format lays them out. ``tensors``: (name, dims, ggml type number)."""
    infos, offset = [], 0
    for name, dims, tensor_type in tensors:
        infos.append(
            string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, tensor_type, offset)
        )
        offset += -(-tensor_bytes(dims, tensor_type) // alignment) * alignment
    head = struct.pack("<IIQQ", GGUF_MAGIC, 3, len(tensors), len(kvs))
    head += b"".join(string(k) + struct.pack("<I", t) + value(t, v) for k, t, v in kvs)
    head += b"".join(infos)
    head += bytes(-len(head) % alignment)
    return head + bytes(offset)


def llama_kvs(
    *,
    arch: str = "llama",
    vocabulary: str = "llama",
    layers: int = 2,
    embedding: int = 64,
    heads: int = 4,
    kv_heads: int | None = 2,
    context: int = 256,
    scores: bool = True,
) -> list[tuple[str, GGUFValueType, Any]]:
    """The metadata of a small model: shape keys and a three-token vocabulary."""
    T = GGUFValueType
    kvs: list[tuple[str, GGUFValueType, Any]] = [
        ("general.architecture", T.STRING, arch),
        (f"{arch}.block_count", T.UINT32, layers),
        (f"{arch}.embedding_length", T.UINT32, embedding),
        (f"{arch}.attention.head_count", T.UINT32, heads),
        (f"{arch}.context_length", T.UINT32, context),
        ("tokenizer.ggml.model", T.STRING, vocabulary),
        ("tokenizer.ggml.tokens", T.ARRAY, Array(T.STRING, ["<unk>", "<s>", "</s>"])),
    ]
    if kv_heads is not None:
        kvs.append((f"{arch}.attention.head_count_kv", T.UINT32, kv_heads))
    if scores:
        kvs.append(("tokenizer.ggml.scores", T.ARRAY, Array(T.FLOAT32, [0.0, 0.0, 0.0])))
    return kvs
