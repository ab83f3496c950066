"""The one GGUF reader: the key/value metadata of a GGUF file (architecture, context
length, vocabulary, chat template) and, when asked, the shapes of named tensors.

``gguf.GGUFReader`` maps every tensor and array into numpy views before answering, which
takes over a second for a 100 MB model here (far more on a Raspberry Pi), and importing
the ``gguf`` package loads numpy (about 18 MiB of the server's memory for two constants).
The server only needs the metadata block at the head of the file, so this module walks
that block itself, with the format's constants from the GGUF specification, and decodes
the large arrays (the vocabulary, its scores) only when asked for them by name. An array
of strings is held as its bytes in the file (:class:`StringArray`, or
:class:`EncodedStrings` undecoded), each string decoded when read; an array of numbers is
one ``array.array``. It serves the server's model checks and chat template, and PicoLM's
tokenizer (:mod:`.engines.picolm.tokenizer`), which reads the vocabulary from it.

A file is untrusted input: every length and count is checked against the file's size
before it is used, nesting is bounded, and any fault is a :class:`GGUFError`.
"""

from __future__ import annotations

import array
import bisect
import enum
import itertools
import mmap
import operator
import struct
import sys
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
    # The dimensions of the tensors asked for by name (the first of a name), as stored.
    tensor_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)

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
            dict(self.tensor_dims),
        )


class EncodedStrings(Sequence[bytes]):
    """A GGUF array of strings as it is in the file (each string's 8-byte length, then
    its bytes), with where each string ends; a string is sliced out when it is read.

    A 32,000-entry vocabulary as 32,000 ``str`` or ``bytes`` objects is about 2 MiB, and
    once freed it leaves holes in the heap that the process does not give back
    (docs/benchmarks.md); held so it is one ``bytes`` object and one array.
    """

    def __init__(self, raw: bytes, ends: array.array[int]) -> None:
        self.raw = raw
        self.ends = ends

    def __len__(self) -> int:
        return len(self.ends)

    def start(self, index: int) -> int:
        """Where string ``index``'s bytes start in :attr:`raw` (after its length)."""
        return (self.ends[index - 1] if index else 0) + 8

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("string array index out of range")
        return self.raw[self.start(index) : self.ends[index]]

    def __iter__(self) -> Iterator[bytes]:
        # Still one at a time, the slices made by map (C) rather than a generator's loop.
        starts = itertools.chain((8,), map(operator.add, self.ends, itertools.repeat(8)))
        return map(self.raw.__getitem__, map(slice, starts, self.ends))


class StringArray(Sequence[str]):
    """A GGUF array of strings, each decoded (UTF-8, errors replaced) when it is read;
    :attr:`encoded` has the same strings undecoded."""

    def __init__(self, raw: bytes, ends: array.array[int]) -> None:
        self.encoded = EncodedStrings(raw, ends)

    def __len__(self) -> int:
        return len(self.encoded)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.encoded[index].decode("utf-8", errors="replace")

    def __iter__(self) -> Iterator[str]:
        return (item.decode("utf-8", errors="replace") for item in self.encoded)

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
        raw, ends, start = self.encoded.raw, self.encoded.ends, self.encoded.start
        position = raw.find(needle)
        while position >= 0:
            index = bisect.bisect_left(ends, position + len(needle))
            if (
                index < len(ends)
                and ends[index] == position + len(needle)
                and start(index) == position
            ):
                return True
            position = raw.find(needle, position + 1)
        return False


_U64 = struct.Struct("<Q")

# Arrays of numbers are read in one go into an ``array.array`` of the same item type
# (no Python object per element): where this platform's typecode has the right size.
_ARRAY_TYPECODES: dict[GGUFValueType, str] = {
    value_type: code
    for value_type, code in {
        GGUFValueType.UINT8: "B",
        GGUFValueType.INT8: "b",
        GGUFValueType.UINT16: "H",
        GGUFValueType.INT16: "h",
        GGUFValueType.UINT32: "I",
        GGUFValueType.INT32: "i",
        GGUFValueType.FLOAT32: "f",
        GGUFValueType.UINT64: "Q",
        GGUFValueType.INT64: "q",
        GGUFValueType.FLOAT64: "d",
    }.items()
    if array.array(code).itemsize == struct.calcsize(_SCALAR_FORMATS[value_type])
}

# Arrays of arrays: the format allows them, no model uses them (llama.cpp refuses them);
# bounded so that a file of nested array headers is refused, not a RecursionError.
_MAX_NESTING = 8
# GGML_MAX_DIMS: llama.cpp refuses a tensor of more, PicoLM has room for no more.
_MAX_DIMS = 4


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

    def advance(self, size: int, what: str = "metadata") -> int:
        """Move past ``size`` bytes; where they start. Refuses to pass the end."""
        start = self.offset
        if size < 0 or start + size > len(self.buffer):
            raise GGUFError(f"{self.path}: truncated GGUF {what}")
        self.offset = start + size
        return start

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buffer, self.advance(struct.calcsize(fmt)))
        return value

    def raw_string(self) -> bytes:
        length = self.unpack("<Q")
        start = self.advance(length, "string")
        return self.buffer[start : self.offset]

    def string(self) -> str:
        return self.raw_string().decode("utf-8", errors="replace")

    def value(self, value_type: GGUFValueType, depth: int = 0) -> Any:
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type == GGUFValueType.ARRAY:
            item_type, count = self.array_header(depth)
            if item_type == GGUFValueType.STRING:
                return self.string_array(count)
            if item_type in _ARRAY_TYPECODES:
                return self.number_array(item_type, count)
            return [self.value(item_type, depth + 1) for _ in range(count)]
        return self.unpack(_SCALAR_FORMATS[value_type])

    def array_header(self, depth: int) -> tuple[GGUFValueType, int]:
        if depth >= _MAX_NESTING:
            raise GGUFError(f"{self.path}: GGUF arrays nested more than {_MAX_NESTING} deep")
        item_type = GGUFValueType(self.unpack("<I"))
        count: int = self.unpack("<Q")
        return item_type, count

    def number_array(self, item_type: GGUFValueType, count: int) -> array.array[Any]:
        code = _ARRAY_TYPECODES[item_type]
        size = count * array.array(code).itemsize
        start = self.advance(size)
        # Straight from the file's bytes: no number object per element, even for a while.
        values = array.array(code, self.buffer[start : self.offset])
        if sys.byteorder == "big":
            values.byteswap()
        return values

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

    def skip_array(self, depth: int = 0) -> int:
        item_type, count = self.array_header(depth)
        if item_type in _SCALAR_FORMATS:
            self.advance(count * struct.calcsize(_SCALAR_FORMATS[item_type]))
        elif item_type == GGUFValueType.STRING:
            self.string_ends(count)
        else:
            for _ in range(count):
                self.skip_array(depth + 1)
        return count

    def tensor_info(self) -> tuple[bytes, tuple[int, ...]]:
        """One tensor's name and dimensions (its type and data offset are skipped)."""
        name = self.raw_string()
        n_dims: int = self.unpack("<I")
        if n_dims > _MAX_DIMS:
            raise GGUFError(f"{self.path}: a tensor of {n_dims} dimensions (at most {_MAX_DIMS})")
        start = self.advance(8 * n_dims, "tensor info")
        dims = struct.unpack_from(f"<{n_dims}Q", self.buffer, start)
        self.advance(4 + 8, "tensor info")  # type, offset
        return name, dims


def read_gguf_metadata(
    path: Path, *, arrays: frozenset[str] = frozenset(), tensors: frozenset[str] = frozenset()
) -> GGUFMetadata:
    """Read every scalar and string value, the arrays whose keys are in ``arrays``, and
    the dimensions of the (first) tensors named in ``tensors`` that the file has."""
    try:
        with (
            path.open("rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer,
        ):
            return _parse(buffer, path, arrays, tensors)
    except (OSError, ValueError) as exc:
        raise GGUFError(f"{path}: cannot read GGUF metadata ({exc})") from None


def _parse(
    buffer: mmap.mmap, path: Path, arrays: frozenset[str], tensors: frozenset[str]
) -> GGUFMetadata:
    cursor = _Cursor(buffer, path)
    if len(buffer) < 24 or cursor.unpack("<I") != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file")
    version = cursor.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported")
    tensor_count = cursor.unpack("<Q")
    kv_count = cursor.unpack("<Q")
    metadata = GGUFMetadata(path=path)
    values, lengths = metadata.values, metadata.array_lengths
    for _ in range(kv_count):
        key = cursor.string()
        value_type = GGUFValueType(cursor.unpack("<I"))
        # A key given twice is what it was given last (as llama.cpp and PicoLM take it),
        # in the place of that last time among the values.
        values.pop(key, None)
        lengths.pop(key, None)
        if value_type == GGUFValueType.ARRAY and key not in arrays:
            lengths[key] = cursor.skip_array()
        else:
            values[key] = cursor.value(value_type)
    wanted = {name.encode("utf-8") for name in tensors}
    for _ in range(tensor_count if wanted else 0):
        name, dims = cursor.tensor_info()
        if name in wanted:
            wanted.discard(name)
            metadata.tensor_dims[name.decode("utf-8")] = dims
            if not wanted:
                break
    return metadata
