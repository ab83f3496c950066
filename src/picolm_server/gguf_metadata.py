"""Read the key/value metadata of a GGUF file: architecture, context length, vocabulary,
chat template.

``gguf.GGUFReader`` maps every tensor and array into numpy views before answering, which
takes over a second for a 100 MB model here (far more on a Raspberry Pi), and importing
the ``gguf`` package loads numpy (about 18 MiB of the server's memory for two constants).
The server only needs the metadata block at the head of the file, so this module walks
that block itself, with the format's constants from the GGUF specification, and decodes
the large arrays (the vocabulary) only when asked for them by name.
"""

from __future__ import annotations

import enum
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GGUF_MAGIC = 0x46554747  # "GGUF", little-endian
TOKENS_KEY = "tokenizer.ggml.tokens"
_SPECIAL_ID_PREFIX, _SPECIAL_ID_SUFFIX = "tokenizer.ggml.", "_token_id"


class GGUFValueType(enum.IntEnum):
    """Metadata value types, numbered as in the GGUF specification."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


class GGUFError(Exception):
    """The file is not a GGUF file this server can read."""


@dataclass
class GGUFMetadata:
    """Metadata values by key. Arrays not asked for are recorded only by their length."""

    path: Path
    values: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    # The special tokens' texts, by name ("eos"), kept when the vocabulary is dropped.
    special_token_texts: dict[str, str | None] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.values.get("general.architecture", ""))

    @property
    def name(self) -> str:
        return str(self.values.get("general.name", ""))

    @property
    def context_length(self) -> int | None:
        value = self.values.get(f"{self.architecture}.context_length")
        return int(value) if value is not None else None

    @property
    def chat_template(self) -> str | None:
        value = self.values.get("tokenizer.chat_template")
        return str(value) if value else None

    @property
    def tokenizer_model(self) -> str:
        return str(self.values.get("tokenizer.ggml.model", ""))

    def token_text(self, key: str) -> str | None:
        """The text of a special token, e.g. ``token_text("eos")``; needs the tokens array
        (or to have been kept by :meth:`without_vocabulary`)."""
        if key in self.special_token_texts:
            return self.special_token_texts[key]
        token_id = self.values.get(f"tokenizer.ggml.{key}_token_id")
        tokens = self.values.get(TOKENS_KEY)
        if token_id is None or not isinstance(tokens, list) or not 0 <= token_id < len(tokens):
            return None
        return str(tokens[token_id])

    def without_vocabulary(self) -> GGUFMetadata:
        """A copy without the tokens array (tens of thousands of strings) in which
        :meth:`token_text` still answers for every special token the file names."""
        names = [
            key[len(_SPECIAL_ID_PREFIX) : -len(_SPECIAL_ID_SUFFIX)]
            for key in self.values
            if key.startswith(_SPECIAL_ID_PREFIX) and key.endswith(_SPECIAL_ID_SUFFIX)
        ]
        lengths = dict(self.array_lengths)
        tokens = self.values.get(TOKENS_KEY)
        if isinstance(tokens, list):
            lengths[TOKENS_KEY] = len(tokens)
        return GGUFMetadata(
            self.path,
            {key: value for key, value in self.values.items() if key != TOKENS_KEY},
            lengths,
            {**self.special_token_texts, **{name: self.token_text(name) for name in names}},
        )


class _Cursor:
    def __init__(self, buffer: mmap.mmap, path: Path) -> None:
        self.buffer = buffer
        self.offset = 0
        self.path = path

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.buffer):
            raise GGUFError(f"{self.path}: truncated GGUF metadata")
        (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        self.offset += size
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        end = self.offset + length
        if end > len(self.buffer):
            raise GGUFError(f"{self.path}: truncated GGUF string")
        raw = self.buffer[self.offset : end]
        self.offset = end
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        length = self.unpack("<Q")
        self.offset += length

    def value(self, value_type: GGUFValueType) -> Any:
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type == GGUFValueType.ARRAY:
            item_type = GGUFValueType(self.unpack("<I"))
            count = self.unpack("<Q")
            return [self.value(item_type) for _ in range(count)]
        return self.unpack(_SCALAR_FORMATS[value_type])

    def skip_array(self) -> int:
        item_type = GGUFValueType(self.unpack("<I"))
        count: int = self.unpack("<Q")
        if item_type in _SCALAR_FORMATS:
            self.offset += count * struct.calcsize(_SCALAR_FORMATS[item_type])
        elif item_type == GGUFValueType.STRING:
            for _ in range(count):
                self.skip_string()
        else:
            for _ in range(count):
                self.skip_array()
        return count


def read_gguf_metadata(path: Path, *, arrays: frozenset[str] = frozenset()) -> GGUFMetadata:
    """Read every scalar and string value, and the arrays whose keys are in ``arrays``."""
    try:
        with (
            path.open("rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer,
        ):
            return _parse(buffer, path, arrays)
    except (OSError, ValueError) as exc:
        raise GGUFError(f"{path}: cannot read GGUF metadata ({exc})") from None


def _parse(buffer: mmap.mmap, path: Path, arrays: frozenset[str]) -> GGUFMetadata:
    cursor = _Cursor(buffer, path)
    if len(buffer) < 24 or cursor.unpack("<I") != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file")
    version = cursor.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported")
    cursor.unpack("<Q")  # tensor count
    kv_count = cursor.unpack("<Q")
    metadata = GGUFMetadata(path=path)
    for _ in range(kv_count):
        key = cursor.string()
        value_type = GGUFValueType(cursor.unpack("<I"))
        if value_type == GGUFValueType.ARRAY and key not in arrays:
            metadata.array_lengths[key] = cursor.skip_array()
        else:
            metadata.values[key] = cursor.value(value_type)
    return metadata
