"""Read the key/value metadata of a GGUF file: architecture, context length, vocabulary,
chat template.

``gguf.GGUFReader`` maps every tensor and array into numpy views before answering, which
takes over a second for a 100 MB model here (far more on a Raspberry Pi), and importing
the ``gguf`` package loads numpy (about 18 MiB of the server's memory for two constants).
The server only needs the metadata block at the head of the file, so this module walks
that block itself, with the format's constants from the GGUF specification, and decodes
the large arrays (the vocabulary) only when asked for them by name. An array of strings
is held as its bytes in the file (:class:`StringArray`), each string decoded when read.
"""

from __future__ import annotations

import array
import bisect
import enum
import mmap
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

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
        if (
            token_id is None
            or not isinstance(tokens, (list, StringArray))
            or not 0 <= token_id < len(tokens)
        ):
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
        if isinstance(tokens, (list, StringArray)):
            lengths[TOKENS_KEY] = len(tokens)
        return GGUFMetadata(
            self.path,
            {key: value for key, value in self.values.items() if key != TOKENS_KEY},
            lengths,
            {**self.special_token_texts, **{name: self.token_text(name) for name in names}},
        )


class StringArray(Sequence[str]):
    """A GGUF array of strings as it is in the file (each string's 8-byte length, then
    its bytes), with where each string ends; a string is decoded when it is read.

    A 32,000-entry vocabulary as 32,000 ``str`` objects is about 2 MiB, and once freed
    it leaves holes in the heap that the process does not give back (docs/benchmarks.md);
    held so it is one ``bytes`` object and one array.
    """

    def __init__(self, raw: bytes, ends: array.array[int]) -> None:
        self._raw = raw
        self._ends = ends

    def __len__(self) -> int:
        return len(self._ends)

    def _start(self, index: int) -> int:
        return (self._ends[index - 1] if index else 0) + 8

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("string array index out of range")
        return self._raw[self._start(index) : self._ends[index]].decode("utf-8", errors="replace")

    def __iter__(self) -> Iterator[str]:
        return (self[index] for index in range(len(self)))

    def __eq__(self, other: object) -> bool:
        # Equal to a list of the same strings, as the list it stands for would be.
        if not isinstance(other, (list, StringArray)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable-sequence semantics, as a list

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        if not value or "\ufffd" in value:
            # Empty, or maybe the decoding of bytes that are not UTF-8: compare decoded.
            return any(item == value for item in self)
        # Otherwise it is a string exactly when its UTF-8 bytes are a string's bytes.
        needle = value.encode("utf-8")
        position = self._raw.find(needle)
        while position >= 0:
            index = bisect.bisect_left(self._ends, position + len(needle))
            if (
                index < len(self)
                and self._ends[index] == position + len(needle)
                and self._start(index) == position
            ):
                return True
            position = self._raw.find(needle, position + 1)
        return False


_U64 = struct.Struct("<Q")


def string_ends(buffer: bytes | mmap.mmap, offset: int, count: int) -> array.array[int]:
    """Where each of ``count`` GGUF strings (an 8-byte length, then the bytes) starting
    at ``offset`` ends, counted from ``offset``; ValueError when the buffer ends first.
    A vocabulary has tens of thousands: a loop over locals, not a reader's method per
    string. (The last end tells how far the strings go.)"""
    size = len(buffer)
    unpack = _U64.unpack_from
    ends = array.array("Q")
    append = ends.append
    position = offset
    for _ in range(count):
        if position + 8 > size:
            raise ValueError("truncated GGUF file")
        position += 8 + unpack(buffer, position)[0]
        if position > size:
            raise ValueError("truncated GGUF file")
        append(position - offset)
    return ends


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

    def value(self, value_type: GGUFValueType) -> Any:
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type == GGUFValueType.ARRAY:
            item_type = GGUFValueType(self.unpack("<I"))
            count = self.unpack("<Q")
            if item_type == GGUFValueType.STRING:
                return self.string_array(count)
            return [self.value(item_type) for _ in range(count)]
        return self.unpack(_SCALAR_FORMATS[value_type])

    def string_ends(self, count: int) -> array.array[int]:
        """Skip ``count`` strings; where each ends, from the first one's start."""
        try:
            ends = string_ends(self.buffer, self.offset, count)
        except ValueError:
            raise GGUFError(f"{self.path}: truncated GGUF string") from None
        if ends:
            self.offset += ends[-1]
        return ends

    def string_array(self, count: int) -> StringArray:
        first = self.offset
        ends = self.string_ends(count)
        return StringArray(self.buffer[first : self.offset], ends)

    def skip_array(self) -> int:
        item_type = GGUFValueType(self.unpack("<I"))
        count: int = self.unpack("<Q")
        if item_type in _SCALAR_FORMATS:
            self.offset += count * struct.calcsize(_SCALAR_FORMATS[item_type])
        elif item_type == GGUFValueType.STRING:
            self.string_ends(count)
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
