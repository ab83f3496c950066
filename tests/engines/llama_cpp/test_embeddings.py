"""The embedding context's pure parts: vector shape and the options read from a model."""

from __future__ import annotations

import asyncio
import math
import struct
from pathlib import Path

from picolm_server.engines.llama_cpp.embeddings import (
    CHUNK_TOKENS,
    LlamaEmbedder,
    LlamaEmbeddingOptions,
    as_float32,
    l2_normalised,
)
from picolm_server.gguf import GGUFMetadata
from tests.conftest import requires_llama


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


@requires_llama
def test_chunked_mean_pooling_equals_llama_cpps_in_one_batch() -> None:
    """An input longer than a chunk, embedded a chunk at a time, gives the vector llama.cpp
    gives for it in one batch with its own mean pooling: the chunks see the tokens before
    them through the cache, so nothing of the attention is lost."""
    import llama_cpp

    from picolm_server.server.bootstrap import embedded_model_path

    model = embedded_model_path()
    text = " ".join(
        f"Item {n} of the list is a {('red', 'blue', 'green')[n % 3]} box." for n in range(90)
    )
    embedder = LlamaEmbedder(
        LlamaEmbeddingOptions(model_path=model, context_length=2048, threads=2)
    )
    try:
        ours = asyncio.run(embedder.embed([text]))
    finally:
        embedder.close()
    assert ours.prompt_tokens > 2 * CHUNK_TOKENS  # three chunks at least

    whole = llama_cpp.Llama(
        model_path=str(model),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=2048,
        n_batch=2048,
        n_ubatch=2048,
        n_threads=2,
        verbose=False,
    )
    try:
        reference = l2_normalised(list(whole.embed(text, normalize=False)))
    finally:
        whole.close()

    (vector,) = ours.vectors
    assert len(vector) == len(reference)
    cosine = math.fsum(a * b for a, b in zip(vector, reference, strict=True))
    assert cosine > 0.9999
    assert max(abs(a - b) for a, b in zip(vector, reference, strict=True)) < 1e-3
