"""The embedding context's pure parts: vector shape and the options read from a model."""

from __future__ import annotations

import math
import struct
from pathlib import Path

from picolm_server.engines.llama_embeddings import (
    LlamaEmbeddingOptions,
    as_float32,
    l2_normalised,
)
from picolm_server.gguf_metadata import GGUFMetadata


def test_vectors_are_unit_length() -> None:
    vector = l2_normalised([3.0, 4.0])
    assert vector == [0.6, 0.8]
    assert math.isclose(math.fsum(x * x for x in l2_normalised([1e-3, -2.0, 7.5])), 1.0)


def test_a_zero_vector_stays_zero() -> None:
    assert l2_normalised([0.0, 0.0]) == [0.0, 0.0]


def test_float32_rounding_survives_a_float32_round_trip() -> None:
    vector = as_float32([0.1, 1 / 3])
    assert vector != (0.1, 1 / 3)
    assert struct.unpack("<2f", struct.pack("<2f", *vector)) == vector


def metadata(**values: object) -> GGUFMetadata:
    return GGUFMetadata(Path("m.gguf"), {"general.architecture": "llama", **values})


def test_a_language_model_is_mean_pooled_within_its_trained_context() -> None:
    options = LlamaEmbeddingOptions.for_model(
        Path("m.gguf"),
        metadata(**{"llama.context_length": 1024}),
        context_length=2048,
        threads=2,
    )
    assert options.pooling_type == 1  # mean
    assert options.context_length == 1024


def test_an_embedding_model_keeps_its_own_pooling() -> None:
    options = LlamaEmbeddingOptions.for_model(
        Path("m.gguf"),
        metadata(**{"llama.pooling_type": 2, "llama.context_length": 8192}),
        context_length=512,
        threads=2,
    )
    assert options.pooling_type == 2  # CLS
    assert options.context_length == 512
