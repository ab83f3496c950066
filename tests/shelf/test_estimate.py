"""The memory estimate before a first load: tensor bytes plus the f16 KV cache of the
context the engine will allocate."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from picolm_server.config.settings import LlamaCppSection, PicoLMSection
from picolm_server.gguf import GGUFValueType, read_gguf_metadata
from picolm_server.shelf.estimate import context_tokens, kv_cache_bytes, memory_estimate
from picolm_server.shelf.model_file import check_model_file
from tests.shelf.conftest import write_model
from tests.support.gguf_bytes import Array

T = GGUFValueType


def test_smollm2_is_its_tensor_bytes_plus_its_kv_cache(smollm2: Path) -> None:
    checked = check_model_file(smollm2)
    reader = gguf.GGUFReader(smollm2)
    tensor_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    assert checked.tensor_bytes == tensor_bytes
    # The file is its head and its tensors: no byte of it left uncounted.
    assert tensor_bytes == smollm2.stat().st_size - reader.data_offset
    # 30 layers, 3 KV heads of 576 / 9 = 64 wide, K and V, 2 bytes each.
    assert kv_cache_bytes(checked.metadata, 2048) == 30 * 2048 * 2 * 3 * 64 * 2
    assert memory_estimate(tensor_bytes, checked.metadata, 2048) == (
        tensor_bytes + 30 * 2048 * 2 * 3 * 64 * 2
    )


def test_the_formula(tmp_path: Path) -> None:
    metadata = read_gguf_metadata(write_model(tmp_path / "m.gguf", layers=3, kv_heads=2))
    # n_layer x context x 2 x n_head_kv x head_dim (64 / 4) x 2 bytes
    assert kv_cache_bytes(metadata, 100) == 3 * 100 * 2 * 2 * 16 * 2
    assert memory_estimate(1000, metadata, 100) == 1000 + 3 * 100 * 2 * 2 * 16 * 2


def test_without_kv_heads_every_head_has_its_own(tmp_path: Path) -> None:
    metadata = read_gguf_metadata(write_model(tmp_path / "m.gguf", kv_heads=None))
    assert kv_cache_bytes(metadata, 10) == 2 * 10 * 2 * 4 * 16 * 2


def test_key_and_value_widths_when_the_file_gives_them(tmp_path: Path) -> None:
    extra = [
        ("llama.attention.key_length", T.UINT32, 256),
        ("llama.attention.value_length", T.UINT32, 128),
    ]
    metadata = read_gguf_metadata(write_model(tmp_path / "m.gguf", extra=extra))
    assert kv_cache_bytes(metadata, 10) == 2 * 10 * 2 * (256 + 128) * 2


def test_kv_heads_layer_by_layer(tmp_path: Path) -> None:
    extra = [("llama.attention.head_count_kv", T.ARRAY, Array(T.UINT32, [4, 0, 1]))]
    path = write_model(tmp_path / "m.gguf", layers=3, kv_heads=None, extra=extra)
    metadata = check_model_file(path).metadata
    assert kv_cache_bytes(metadata, 10) == (4 + 0 + 1) * 10 * 2 * 16 * 2


@pytest.mark.parametrize(
    "shape",
    [{"layers": 0}, {"heads": 0}, {"kv_heads": None, "heads": 0}],
)
def test_no_shape_no_kv_figure(tmp_path: Path, shape: dict[str, int | None]) -> None:
    metadata = read_gguf_metadata(write_model(tmp_path / "m.gguf", **shape))  # type: ignore[arg-type]
    assert kv_cache_bytes(metadata, 100) is None
    assert memory_estimate(1000, metadata, 100) == 1000


def test_a_file_without_its_shape(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", arch="mystery")
    raw = path.read_bytes().replace(b"mystery.block_count", b"mystery.other_count")
    path.write_bytes(raw)
    assert kv_cache_bytes(read_gguf_metadata(path), 100) is None


def test_the_context_each_engine_allocates(tmp_path: Path) -> None:
    metadata = read_gguf_metadata(write_model(tmp_path / "m.gguf", context=512))
    picolm = PicoLMSection(context_length=2048)
    assert context_tokens("picolm", picolm, metadata) == 512  # capped at the model's
    assert context_tokens("picolm", PicoLMSection(context_length=128), metadata) == 128
    llama = LlamaCppSection(context_length=2048, parallel=4)
    assert context_tokens("llama_cpp", llama, metadata) == 2048 * 4  # a context per slot
