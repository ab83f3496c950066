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

Asked to (``check_tensors=True``), it also reads every tensor's header into a
:class:`TensorTable` and checks the file as llama.cpp's loader would before anything
loads it: known tensor types, rows whole in blocks, offsets aligned, every tensor's
data inside the file. The table's byte counts are what a memory estimate starts from.

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
import os
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

GGUF_MAGIC = 0x46554747  # "GGUF", little-endian
GGUF_DEFAULT_ALIGNMENT = 32  # where ``general.alignment`` does not say
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


class GGMLType(enum.IntEnum):
    """Tensor data types, numbered as in ggml (the numbers ggml retired are absent)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


# Each type's (values per block, bytes per block): a row of n values takes
# n / block * bytes, and n must be a whole number of blocks.
GGML_BLOCK_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 40),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.IQ2_XXS: (256, 66),
    GGMLType.IQ2_XS: (256, 74),
    GGMLType.IQ3_XXS: (256, 98),
    GGMLType.IQ1_S: (256, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (256, 110),
    GGMLType.IQ2_S: (256, 82),
    GGMLType.IQ4_XS: (256, 136),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, 56),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (256, 54),
    GGMLType.TQ2_0: (256, 66),
    GGMLType.MXFP4: (32, 17),
    GGMLType.NVFP4: (64, 36),
    GGMLType.Q1_0: (128, 18),
}


class GGUFError(Exception):
    """The file is not a GGUF file this server can read."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header: its data is ``n_bytes`` at ``offset`` in the data section."""

    name: str
    dims: tuple[int, ...]
    type: GGMLType
    offset: int
    n_bytes: int


@dataclass(frozen=True)
class TensorTable:
    """Every tensor of a checked file, and where their data section starts."""

    tensors: tuple[TensorInfo, ...]
    data_offset: int

    @property
    def total_bytes(self) -> int:
        """The bytes of tensor data: what the weights take in memory, mapped or copied."""
        return sum(tensor.n_bytes for tensor in self.tensors)

    def bytes_by_type(self) -> dict[GGMLType, int]:
        """Tensor bytes per data type, the type with the most bytes first."""
        totals: dict[GGMLType, int] = {}
        for tensor in self.tensors:
            totals[tensor.type] = totals.get(tensor.type, 0) + tensor.n_bytes
        return dict(sorted(totals.items(), key=lambda item: -item[1]))


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
    # Every tensor, when the file was read with ``check_tensors=True``.
    tensor_table: TensorTable | None = None

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
            self.tensor_table,
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

    def tensor_info(self) -> tuple[bytes, tuple[int, ...], int, int]:
        """One tensor's name, dimensions, type number and data offset."""
        name = self.raw_string()
        n_dims: int = self.unpack("<I")
        if n_dims > _MAX_DIMS:
            raise GGUFError(f"{self.path}: a tensor of {n_dims} dimensions (at most {_MAX_DIMS})")
        start = self.advance(8 * n_dims, "tensor info")
        dims = struct.unpack_from(f"<{n_dims}Q", self.buffer, start)
        start = self.advance(4 + 8, "tensor info")
        type_number, offset = struct.unpack_from("<IQ", self.buffer, start)
        return name, dims, type_number, offset


def read_gguf_metadata(
    path: Path,
    *,
    arrays: frozenset[str] = frozenset(),
    tensors: frozenset[str] = frozenset(),
    check_tensors: bool = False,
) -> GGUFMetadata:
    """Read every scalar and string value, the arrays whose keys are in ``arrays``, and
    the dimensions of the (first) tensors named in ``tensors`` that the file has. With
    ``check_tensors``, also every tensor's header, checked against the file
    (:attr:`GGUFMetadata.tensor_table`): a file that passes is whole."""
    try:
        with path.open("rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise GGUFError(f"{path}: not a GGUF file (it is empty)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                return _parse(buffer, path, arrays, tensors, check_tensors)
    except (OSError, ValueError) as exc:
        raise GGUFError(f"{path}: cannot read GGUF metadata ({exc})") from None


def _parse(
    buffer: mmap.mmap,
    path: Path,
    arrays: frozenset[str],
    tensors: frozenset[str],
    check_tensors: bool = False,
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
    if check_tensors:
        metadata.tensor_table = _tensor_table(cursor, tensor_count, values)
        for info in metadata.tensor_table.tensors:
            if info.name in tensors and info.name not in metadata.tensor_dims:
                metadata.tensor_dims[info.name] = info.dims
        return metadata
    wanted = {name.encode("utf-8") for name in tensors}
    for _ in range(tensor_count if wanted else 0):
        name, dims, _type, _offset = cursor.tensor_info()
        if name in wanted:
            wanted.discard(name)
            metadata.tensor_dims[name.decode("utf-8")] = dims
            if not wanted:
                break
    return metadata


# The smallest tensor header: an empty name (8), no dimensions (4), type (4), offset (8).
_MIN_TENSOR_INFO = 24


def _tensor_table(cursor: _Cursor, count: int, values: dict[str, Any]) -> TensorTable:
    """Every tensor header, checked as llama.cpp's GGUF loader checks them."""
    path = cursor.path
    if count > (len(cursor.buffer) - cursor.offset) // _MIN_TENSOR_INFO:
        raise GGUFError(f"{path}: {count} tensors cannot fit in the file (truncated GGUF?)")
    alignment = values.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or alignment <= 0
        or alignment & (alignment - 1)
    ):
        raise GGUFError(f"{path}: general.alignment {alignment!r} is not a power of two")
    infos: list[TensorInfo] = []
    seen: set[bytes] = set()
    for _ in range(count):
        raw_name, dims, type_number, offset = cursor.tensor_info()
        name = raw_name.decode("utf-8", errors="replace")
        if raw_name in seen:
            raise GGUFError(f"{path}: tensor {name!r} is given twice")
        seen.add(raw_name)
        try:
            tensor_type = GGMLType(type_number)
        except ValueError:
            raise GGUFError(f"{path}: tensor {name!r} has unknown type {type_number}") from None
        block, block_bytes = GGML_BLOCK_SIZES[tensor_type]
        if dims and dims[0] % block:
            raise GGUFError(
                f"{path}: tensor {name!r}: rows of {dims[0]} values are not whole "
                f"{tensor_type.name} blocks of {block}"
            )
        if offset % alignment:
            raise GGUFError(f"{path}: tensor {name!r}: offset {offset} is not aligned")
        elements = 1
        for dim in dims:
            elements *= dim
        infos.append(TensorInfo(name, dims, tensor_type, offset, elements // block * block_bytes))
    data_offset = -(-cursor.offset // alignment) * alignment
    data_size = len(cursor.buffer) - data_offset
    for info in infos:
        if info.offset + info.n_bytes > data_size:
            raise GGUFError(
                f"{path}: tensor {info.name!r}'s data ends past the end of the file "
                "(truncated GGUF)"
            )
    return TensorTable(tuple(infos), data_offset)
