"""``/tokenize`` and ``/detokenize`` over HTTP in llama-server's shape, on the app
in-process over a scripted engine (its words are its tokens): the shapes, bad bodies and
an engine without a tokenizer refused. What the real tokenizers give is in
test_tokenize_on_engines.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_API_KEY
from tests.support.inprocess import InProcessServer, serve_in_process
from tests.support.picolm_setup import MODEL_ID
from tests.support.scripted_engine import SCHEMA_ABILITIES, ScriptedEngine

AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}

pytestmark = pytest.mark.anyio


async def post(server: InProcessServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return await server.http().post(path, json=body, headers=AUTH)


async def test_shapes(app_server: InProcessServer) -> None:
    engine = app_server.engine
    tokenized = await post(app_server, "/tokenize", {"content": "Hello world"})
    assert tokenized.status_code == 200
    assert tokenized.json() == {
        "tokens": engine.tokenize("Hello world", add_special=False, parse_special=True)
    }
    special = await post(app_server, "/tokenize", {"content": "hello", "add_special": True})
    assert special.json() == {"tokens": [0, 1]}
    detokenized = await post(app_server, "/detokenize", {"tokens": [1, 2]})
    assert detokenized.status_code == 200
    assert detokenized.json() == {"content": engine.detokenize([1, 2])}


async def test_pieces(app_server: InProcessServer) -> None:
    body = {"content": "Hello world hello", "with_pieces": True}
    tokens = (await post(app_server, "/tokenize", body)).json()["tokens"]
    assert tokens == [
        {"id": 1, "piece": "hello"},
        {"id": 2, "piece": "world"},
        {"id": 1, "piece": "hello"},
    ]
    ids = (await post(app_server, "/tokenize", {"content": "Hello world hello"})).json()["tokens"]
    assert [item["id"] for item in tokens] == ids


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tokenize", {}),
        ("/tokenize", {"content": 5}),
        ("/tokenize", {"content": "a", "with_pieces": "yes"}),
        ("/detokenize", {"tokens": "1 2"}),
        ("/detokenize", {"tokens": [1.5]}),
    ],
)
async def test_bad_bodies_are_400s(
    app_server: InProcessServer, path: str, body: dict[str, Any]
) -> None:
    response = await post(app_server, path, body)
    assert response.status_code == 400
    assert response.json()["error"]["param"]


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
async def test_an_engine_without_a_tokenizer_refuses(path: str) -> None:
    engine = ScriptedEngine(abilities=SCHEMA_ABILITIES)
    engine.model = replace(engine.model, id=MODEL_ID)
    body = {"content": "hello"} if path == "/tokenize" else {"tokens": [1]}
    async with serve_in_process(engine) as server:
        response = await post(server, path, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "unsupported_by_engine"
    assert "cannot tokenize" in error["message"]
