"""``/v1/embeddings``' wire format through the official SDK (and raw httpx where the
bytes are the point), on the application in-process over a scripted engine that
embeds: the spec's shapes, base64, list inputs, the refusals. What the vectors mean and
the engine's own refusals are test_http_on_llama.py, on the real SmolLM2."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import openai
import pytest

from tests.support.inprocess import CONTEXT_LENGTH, InProcessServer, serve_in_process
from tests.support.openapi import check_schema
from tests.support.picolm_setup import MODEL_ID
from tests.support.scripted_engine import EMBEDDING_WIDTH, EmbeddingEngine, prompt_token_count

pytestmark = pytest.mark.anyio


@pytest.fixture
async def embedding_app() -> AsyncIterator[InProcessServer]:
    """The app over an engine that embeds."""
    engine = EmbeddingEngine()
    engine.model = replace(engine.model, id=MODEL_ID, context_length=CONTEXT_LENGTH)
    async with serve_in_process(engine) as server:
        yield server


async def post(server: InProcessServer, body: dict[str, Any]) -> httpx.Response:
    return await server.client(max_retries=0).post("/embeddings", body=body, cast_to=httpx.Response)


def decoded(item: dict[str, Any]) -> list[float]:
    """A base64 embedding as OpenAI sends it: little-endian float32."""
    data = base64.b64decode(item["embedding"])
    return list(struct.unpack(f"<{len(data) // 4}f", data))


async def test_sdk_float_and_base64_carry_the_same_vectors(
    embedding_app: InProcessServer,
) -> None:
    client = embedding_app.client(max_retries=0)
    texts = ["The cat sat on the mat.", "Quarterly revenue rose by eight percent."]
    # The SDK asks for base64 by default and decodes it itself (little-endian float32).
    floats = await client.embeddings.create(model=MODEL_ID, input=texts)
    assert [item.index for item in floats.data] == [0, 1]
    raw = await client.embeddings.with_raw_response.create(
        model=MODEL_ID, input=texts, encoding_format="base64"
    )
    body = raw.http_response.json()  # base64 strings: the spec knows only arrays
    assert [decoded(item) for item in body["data"]] == [item.embedding for item in floats.data]
    as_floats = await client.embeddings.create(model=MODEL_ID, input=texts, encoding_format="float")
    assert [item.embedding for item in as_floats.data] == [item.embedding for item in floats.data]
    assert floats.usage.prompt_tokens == floats.usage.total_tokens
    assert floats.usage.prompt_tokens == sum(prompt_token_count(text) for text in texts)
    for item in floats.data:
        assert len(item.embedding) == EMBEDDING_WIDTH
        assert math.isclose(math.fsum(x * x for x in item.embedding), 1.0, rel_tol=1e-5)
    assert floats.data[0].embedding != floats.data[1].embedding
    assert embedding_app.engine.embedded == [texts] * 3  # type: ignore[attr-defined]


async def test_the_raw_response_is_openais_shape(embedding_app: InProcessServer) -> None:
    response = await embedding_app.http().post(
        "/v1/embeddings",
        json={"model": MODEL_ID, "input": "hello", "encoding_format": "float"},
        headers={"Authorization": f"Bearer {embedding_app.api_key}"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    check_schema(body, "CreateEmbeddingResponse")
    assert body["object"] == "list" and body["model"] == MODEL_ID
    assert body["data"][0]["object"] == "embedding"
    assert body["data"][0]["index"] == 0
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("one text", ["one text"]),
        (["first", "second", "third"], ["first", "second", "third"]),
        ([5, 6, 7], [(5, 6, 7)]),
        ([[5, 6], [7]], [(5, 6), (7,)]),
    ],
)
async def test_list_inputs_reach_the_engine_in_order(
    embedding_app: InProcessServer, value: Any, expected: list[Any]
) -> None:
    response = await embedding_app.client(max_retries=0).embeddings.create(
        model=MODEL_ID, input=value, encoding_format="float"
    )
    assert [item.index for item in response.data] == list(range(len(expected)))
    (given,) = embedding_app.engine.embedded  # type: ignore[attr-defined]
    assert [item if isinstance(item, str) else tuple(item) for item in given] == expected
    tokens = sum(
        prompt_token_count(item) if isinstance(item, str) else len(item) for item in expected
    )
    assert response.usage.prompt_tokens == tokens


async def test_the_same_input_gives_the_same_vector_alone_or_in_a_batch(
    embedding_app: InProcessServer,
) -> None:
    client = embedding_app.client(max_retries=0)
    alone = await client.embeddings.create(model=MODEL_ID, input="blue sky")
    batch = await client.embeddings.create(model=MODEL_ID, input=["red sun", "blue sky"])
    assert batch.data[1].embedding == alone.data[0].embedding
    assert batch.data[0].embedding != alone.data[0].embedding


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi", "dimensions": 64}, "dimensions"),
        ({"input": "hi", "dimensions": 0}, "dimensions"),
        ({"input": ""}, "input"),
        ({"input": ["a", ""]}, "input[1]"),
        ({"input": []}, "input"),
        ({"input": [[5], []]}, "input[1]"),
        ({"input": ["a"] * 2049}, "input"),
        ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({"input": 5}, "input"),
        ({}, "input"),
    ],
)
async def test_refusals_are_400s_naming_the_parameter(
    embedding_app: InProcessServer, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await post(embedding_app, {"model": MODEL_ID, **body})
    response = caught.value.response
    assert response.status_code == 400, response.text
    check_schema(response.json(), "ErrorResponse")
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


async def test_the_models_own_dimensions_are_accepted(embedding_app: InProcessServer) -> None:
    response = await embedding_app.client(max_retries=0).embeddings.create(
        model=MODEL_ID, input="hi", dimensions=EMBEDDING_WIDTH
    )
    assert len(response.data[0].embedding) == EMBEDDING_WIDTH


async def test_an_unknown_model_is_404(embedding_app: InProcessServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await embedding_app.client(max_retries=0).embeddings.create(
            model="text-embedding-3-small", input="hi"
        )
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert embedding_app.engine.embedded == []  # type: ignore[attr-defined]


async def test_an_engine_that_cannot_embed_says_so(app_server: InProcessServer) -> None:
    """The PicoLM engine declares no embeddings (as the scripted engine by default)."""
    with pytest.raises(openai.BadRequestError) as caught:
        await app_server.client(max_retries=0).embeddings.create(model=MODEL_ID, input="hello")
    error = caught.value.body
    assert isinstance(error, dict)
    assert caught.value.status_code == 400
    assert "cannot compute embeddings" in error["message"]
    assert error["code"] == "embeddings_not_supported"
