"""``/v1/embeddings`` on the real SmolLM2 through llama.cpp, where the engine is the
point: the end-to-end smoke (the model's width, unit vectors), what the vectors mean,
token arrays, the engine's own refusals, its own thread beside generation, and a
dedicated embedding model. The wire format is test_http.py, in-process."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import requires_llama
from tests.support.server import RunningServer, run_server
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

MODEL = "SmolLM2-135M-Instruct"

pytestmark = requires_llama


def cosine(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        math.fsum(x * x for x in a) * math.fsum(y * y for y in b)
    )


def post(server: RunningServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.base_url + "/v1/embeddings", json=body, timeout=300)


def test_sdk_float_and_base64_carry_the_same_vectors(llama_server: RunningServer) -> None:
    client = llama_server.client()
    texts = ["The cat sat on the mat.", "Quarterly revenue rose by eight percent."]
    floats = client.embeddings.create(model=MODEL, input=texts)
    # The SDK asks for base64 by default and decodes it itself (little-endian float32).
    assert [item.index for item in floats.data] == [0, 1]
    raw = client.embeddings.with_raw_response.create(
        model=MODEL, input=texts, encoding_format="base64"
    )
    body = raw.http_response.json()
    decoded = [
        list(
            struct.unpack(
                f"<{len(base64.b64decode(item['embedding'])) // 4}f",
                base64.b64decode(item["embedding"]),
            )
        )
        for item in body["data"]
    ]
    assert decoded == [item.embedding for item in floats.data]
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    for item in floats.data:
        assert len(item.embedding) == 576
        assert math.isclose(math.fsum(x * x for x in item.embedding), 1.0, rel_tol=1e-5)


def test_similar_sentences_are_closer_than_unrelated_ones(llama_server: RunningServer) -> None:
    client = llama_server.client()
    texts = [
        "The cat sat on the mat.",
        "A kitten was sitting on the rug.",
        "Quarterly revenue rose by eight percent.",
    ]
    cat, kitten, revenue = (
        item.embedding for item in client.embeddings.create(model=MODEL, input=texts).data
    )
    assert cosine(cat, kitten) > cosine(cat, revenue)
    assert cosine(cat, kitten) > cosine(kitten, revenue)


def test_token_arrays_embed_as_their_text_does(llama_server: RunningServer) -> None:
    text = "Paris is the capital of France."
    tokens = httpx.post(llama_server.base_url + "/tokenize", json={"content": text}).json()[
        "tokens"
    ]
    by_text = post(llama_server, {"model": MODEL, "input": text}).json()
    by_tokens = post(llama_server, {"model": MODEL, "input": tokens}).json()
    by_lists = post(llama_server, {"model": MODEL, "input": [tokens, tokens[:3]]}).json()
    assert by_tokens["data"][0]["embedding"] == by_text["data"][0]["embedding"]
    assert by_lists["data"][0]["embedding"] == by_text["data"][0]["embedding"]
    assert by_lists["usage"]["prompt_tokens"] == len(tokens) + 3


def test_the_same_input_gives_the_same_vector_alone_or_in_a_batch(
    llama_server: RunningServer,
) -> None:
    alone = post(llama_server, {"model": MODEL, "input": "blue sky"}).json()
    batch = post(llama_server, {"model": MODEL, "input": ["red sun", "blue sky"]}).json()
    assert batch["data"][1]["embedding"] == alone["data"][0]["embedding"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [5, 10**9]}, "input"),
        ({"input": [[5], [-1]]}, "input[1]"),
        ({"input": "word " * 3000}, "input"),
    ],
)
def test_the_engines_refusals_are_400s_naming_the_parameter(
    llama_server: RunningServer, body: dict[str, Any], param: str
) -> None:
    response = post(llama_server, {"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_the_models_own_dimensions_are_accepted(llama_server: RunningServer) -> None:
    response = post(llama_server, {"model": MODEL, "input": "hi", "dimensions": 576})
    assert response.status_code == 200
    assert len(response.json()["data"][0]["embedding"]) == 576


def test_an_input_over_the_context_is_a_context_error(llama_server: RunningServer) -> None:
    error = post(llama_server, {"model": MODEL, "input": "word " * 3000}).json()["error"]
    assert error["code"] == "context_length_exceeded"


def test_generation_runs_while_a_long_embedding_request_does(llama_server: RunningServer) -> None:
    """Embeddings have their own context and thread: a chat reply does not wait for a
    batch of embeddings to end, and a batch whose client left stops."""

    async def scenario() -> tuple[bool, str]:
        async with httpx.AsyncClient(base_url=llama_server.base_url, timeout=600) as http:
            batch = {"model": MODEL, "input": ["a long sentence to embed " * 60] * 400}
            embedding = asyncio.ensure_future(http.post("/v1/embeddings", json=batch))
            await asyncio.sleep(0.5)
            chat = await http.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "Say hi."}],
                    "max_tokens": 3,
                    "temperature": 0,
                },
            )
            still_embedding = not embedding.done()
            embedding.cancel()
            await asyncio.gather(embedding, return_exceptions=True)
            return still_embedding, chat.json()["choices"][0]["finish_reason"]

    still_embedding, finish = asyncio.run(scenario())
    assert still_embedding
    assert finish in ("stop", "length")
    # The abandoned batch stopped: the next request is answered.
    assert post(llama_server, {"model": MODEL, "input": "after"}).status_code == 200


@pytest.fixture(scope="module")
def dedicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The embedded model for chat, and a separate (tiny) GGUF for embeddings."""
    root = tmp_path_factory.mktemp("embedding-model")
    model = build_tiny_llama_gguf(root / "tiny-embed.gguf")
    config = {"llama_cpp": {"embedding_model_path": str(model)}}
    with run_server(config, root) as server:
        yield server


def test_a_dedicated_embedding_model(dedicated: RunningServer) -> None:
    vectors = dedicated.client().embeddings.create(model=MODEL, input=["hello", "world"]).data
    assert [len(item.embedding) for item in vectors] == [64, 64]  # the tiny model's width
