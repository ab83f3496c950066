"""Every error the server returns, over HTTP: OpenAI's envelope, status, type, code, param;
on the application in-process (tests/support/inprocess.py). Errors that need the PicoLM
engine's process (its exit, a time limit, a full queue, a client that leaves) are in
test_errors_on_picolm.py, on a real server."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TEST_API_KEY
from tests.http.test_requests import AUTH, send_chat, sse_payloads, user
from tests.support.inprocess import InProcessServer
from tests.support.openapi import check_schema
from tests.support.picolm_setup import MODEL_ID


def marker() -> str:
    return f"id-{uuid.uuid4().hex[:12]}"


def assert_error(
    response: httpx.Response, status: int, *, type_: str, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    check_schema(body, "ErrorResponse")
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == type_
    if code is not None:
        assert error["code"] == code
    return dict(error)


@pytest.fixture
def client(app_server: InProcessServer) -> openai.AsyncOpenAI:
    return app_server.client(max_retries=0, timeout=30)


pytestmark = pytest.mark.anyio


# ---- 400 -------------------------------------------------------------------------------------


async def test_malformed_json(app_server: InProcessServer) -> None:
    response = await app_server.http().post(
        "/v1/chat/completions",
        content=b'{"model": "tiny-picolm", "messages": [',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    error = assert_error(response, 400, type_="invalid_request_error")
    assert "JSON" in error["message"]


async def test_body_that_is_not_an_object(app_server: InProcessServer) -> None:
    response = await app_server.http().post("/v1/chat/completions", json=[1, 2], headers=AUTH)
    assert_error(response, 400, type_="invalid_request_error")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": user("hi"), "temperature": 5}, "temperature"),
        ({"messages": user("hi"), "temperature": "hot"}, "temperature"),
        ({"messages": user("hi"), "max_tokens": 0}, "max_tokens"),
        ({"messages": user("hi"), "top_p": 1.5}, "top_p"),
        ({"messages": user("hi"), "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].type",
        ),
    ],
)
async def test_invalid_parameter_names_the_field(
    app_server: InProcessServer, body: dict[str, Any], param: str
) -> None:
    error = assert_error(await send_chat(app_server, body), 400, type_="invalid_request_error")
    assert error["param"] == param
    assert param.split(".")[0].split("[")[0] in error["message"]


async def test_deeply_nested_json_is_refused_not_a_crash(app_server: InProcessServer) -> None:
    depth = 10_000  # well past Python's recursion limit, under the test server's body limit
    body = b'{"model": "x", "messages": [], "metadata": ' + b"[" * depth + b"]" * depth + b"}"
    response = await app_server.http().post(
        "/v1/chat/completions",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    error = assert_error(response, 400, type_="invalid_request_error")
    assert "nested" in error["message"]


async def test_lone_surrogate_escape_is_refused_not_a_crash(app_server: InProcessServer) -> None:
    # "\ud800" is valid JSON but stands for no character; a pair ("\ud83d\ude00") is fine.
    body = b'{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "%s"}]}'
    for content, status in ((b"\\ud800 hi", 400), (b"\\ud83d\\ude00 hi", 200)):
        response = await app_server.http().post(
            "/v1/chat/completions",
            content=body % (MODEL_ID.encode(), content),
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=30,
        )
        if status == 400:
            error = assert_error(response, 400, type_="invalid_request_error")
            assert "Unicode" in error["message"]
        else:
            assert response.status_code == 200, response.text


async def test_no_model_is_the_default_model_and_a_wrong_one_is_named(
    app_server: InProcessServer,
) -> None:
    http = app_server.http()
    response = await http.post("/v1/chat/completions", json={"messages": user("hi")}, headers=AUTH)
    assert response.status_code == 200 and response.json()["model"] == MODEL_ID
    response = await http.post(
        "/v1/chat/completions", json={"model": 7, "messages": user("hi")}, headers=AUTH
    )
    error = assert_error(response, 400, type_="invalid_request_error")
    assert error["param"] == "model" and "model" in error["message"]
    response = await http.post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": user("hi")}, headers=AUTH
    )
    error = assert_error(response, 404, type_="invalid_request_error")
    assert (error["param"], error["code"]) == ("model", "model_not_found")


async def test_invalid_parameter_through_sdk(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL_ID, messages=user("hi"), temperature=3)
    assert caught.value.param == "temperature"


async def test_context_length_exceeded(
    client: openai.AsyncOpenAI, app_server: InProcessServer
) -> None:
    long_text = " ".join(f"w{i}" for i in range(600))  # well over the 512-token context
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=MODEL_ID, messages=user(long_text), stream=stream
            )
        assert caught.value.code == "context_length_exceeded"
        assert caught.value.param == "messages"
        assert "512" in caught.value.message
    response = await send_chat(app_server, {"messages": user(long_text)})
    assert_error(response, 400, type_="invalid_request_error", code="context_length_exceeded")


# ---- 401 -------------------------------------------------------------------------------------


async def test_missing_api_key(app_server: InProcessServer) -> None:
    for path in ("/v1/models", f"/v1/models/{MODEL_ID}"):
        response = await app_server.http().get(path)
        assert_error(response, 401, type_="invalid_request_error", code="invalid_api_key")
    response = await app_server.http().post(
        "/v1/chat/completions",
        json={"model": MODEL_ID, "messages": user("hi")},
    )
    assert_error(response, 401, type_="invalid_request_error", code="invalid_api_key")


@pytest.mark.parametrize(
    "header", [f"Bearer {TEST_API_KEY}x", "Bearer", TEST_API_KEY, f"Basic {TEST_API_KEY}"]
)
async def test_wrong_api_key(app_server: InProcessServer, header: str) -> None:
    response = await app_server.http().get("/v1/models", headers={"Authorization": header})
    assert_error(response, 401, type_="invalid_request_error", code="invalid_api_key")


async def test_wrong_api_key_through_sdk(app_server: InProcessServer) -> None:
    client = app_server.client(api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.chat.completions.create(model=MODEL_ID, messages=user("hi"))
    assert caught.value.status_code == 401


# ---- 404, 405 ----------------------------------------------------------------------------


async def test_unknown_route(app_server: InProcessServer) -> None:
    response = await app_server.http().get("/v1/nothing-here", headers=AUTH)
    error = assert_error(response, 404, type_="invalid_request_error")
    assert "/v1/nothing-here" in error["message"]


async def test_wrong_method(app_server: InProcessServer) -> None:
    response = await app_server.http().get("/v1/chat/completions", headers=AUTH)
    assert_error(response, 405, type_="invalid_request_error")


async def test_unknown_model(client: openai.AsyncOpenAI, app_server: InProcessServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-9", messages=user("hi"))
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("gpt-9")
    assert caught.value.code == "model_not_found"
    response = await send_chat(app_server, {"model": "gpt-9", "messages": user("hi")})
    error = assert_error(response, 404, type_="invalid_request_error", code="model_not_found")
    assert "gpt-9" in error["message"]


# ---- 413 -------------------------------------------------------------------------------------


def big_body() -> bytes:
    body = {"model": MODEL_ID, "messages": user("x" * 70_000)}  # max_body is 64 KiB
    return json.dumps(body).encode()


async def test_oversized_body_with_content_length(app_server: InProcessServer) -> None:
    response = await app_server.http().post(
        "/v1/chat/completions",
        content=big_body(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert_error(response, 413, type_="invalid_request_error", code="request_too_large")


async def test_oversized_body_chunked(app_server: InProcessServer) -> None:
    data = big_body()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    response = await app_server.http().post(
        "/v1/chat/completions",
        content=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, type_="invalid_request_error", code="request_too_large")


async def test_oversized_body_through_sdk(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model=MODEL_ID, messages=user("x" * 70_000))
    assert caught.value.status_code == 413


# ---- 500: the engine fails after the first byte ----------------------------------------


async def test_engine_failure_after_the_first_byte_is_an_error_event(
    client: openai.AsyncOpenAI, app_server: InProcessServer
) -> None:
    response = await send_chat(app_server, {"messages": user("[[crash]]"), "stream": True})
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    assert "[DONE]" not in payloads
    last = json.loads(payloads[-1])
    check_schema(last, "ErrorResponse")
    assert last["error"]["code"] == "engine_error" and last["error"]["type"] == "server_error"
    # The text before the crash was sent as ordinary chunks.
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    with pytest.raises(openai.APIError):
        stream = await client.chat.completions.create(
            model=MODEL_ID, messages=user("[[crash]]"), stream=True
        )
        [chunk async for chunk in stream]
    assert await client.chat.completions.create(model=MODEL_ID, messages=user("[[reply:ok]]"))
