"""Every error answer in the envelope of the request's API, whoever sends it: a route,
the body limit, the key check, the shutdown drain, the connection cap, an unexpected
exception. Anthropic's on /v1/messages (with the request's id, also in ``request-id``),
OpenAI's on every other path. Driven in-process over the scripted engine."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
from starlette.types import Message, Receive, Scope, Send

from picolm_server.http import limits
from picolm_server.http.manners import UnexpectedErrorMiddleware
from picolm_server.server.app import create_app
from tests.generation.test_core import core_for
from tests.support import anthropic_types
from tests.support.scripted_engine import ScriptedEngine

MESSAGES = {"model": "scripted", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
BIG = {**CHAT, "padding": "x" * 4096}


def post(
    path: str, body: dict[str, Any], *, draining: bool = False, **options: Any
) -> httpx.Response:
    core = core_for(ScriptedEngine()).core
    app = create_app(core, log_requests=False, max_body=2048, **options)
    if draining:
        core.drain.begin()

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, json=body)

    return anyio.run(run)


def assert_anthropic(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status
    error = anthropic_types.error(response.content)
    assert error.error.type == kind
    request_id = response.json()["request_id"]
    assert request_id and request_id == response.headers["x-request-id"]
    assert response.headers["request-id"] == request_id


def assert_openai(response: httpx.Response, status: int, code: str | None) -> None:
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert "request-id" not in response.headers


def test_a_body_too_large() -> None:
    assert_anthropic(post("/v1/messages", {**MESSAGES, **BIG}), 413, "invalid_request_error")
    assert_openai(post("/v1/chat/completions", BIG), 413, "request_too_large")


def test_the_drain() -> None:
    anthropic = post("/v1/messages", MESSAGES, draining=True)
    assert_anthropic(anthropic, 503, "overloaded_error")
    assert anthropic.headers["connection"] == "close"
    openai = post("/v1/chat/completions", CHAT, draining=True)
    assert_openai(openai, 503, "server_shutting_down")
    assert openai.headers["connection"] == "close"


def test_the_key_check() -> None:
    assert_anthropic(post("/v1/messages", MESSAGES, api_key="k"), 401, "authentication_error")
    assert_openai(post("/v1/chat/completions", CHAT, api_key="k"), 401, "invalid_api_key")


def test_routes_and_unknown_paths() -> None:
    wrong_model = {**MESSAGES, "model": "nope"}
    assert_anthropic(post("/v1/messages", wrong_model), 404, "not_found_error")
    assert_anthropic(post("/v1/messages/nothing", MESSAGES), 404, "not_found_error")
    assert_openai(post("/v1/chat/completions", {**CHAT, "model": "nope"}), 404, "model_not_found")
    assert_openai(post("/v1/nothing", CHAT), 404, "unknown_url")


def test_success_on_the_messages_paths_has_the_request_id_header() -> None:
    for path, body in (("/v1/messages", MESSAGES), ("/v1/messages", {**MESSAGES, "stream": True})):
        response = post(path, body)
        assert response.status_code == 200
        assert response.headers["request-id"] == response.headers["x-request-id"]
    assert "request-id" not in post("/v1/chat/completions", CHAT).headers


def answer_of(
    app: Callable[[Scope, Receive, Send], Awaitable[None]], path: str
) -> tuple[int, dict[str, str], bytes]:
    """What an ASGI app sends for a POST to ``path`` (no request log: no request id)."""
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "state": {}}
    anyio.run(app, scope, receive, send)
    start = messages[0]
    headers = {name.decode(): value.decode() for name, value in start["headers"]}
    body = b"".join(m.get("body", b"") for m in messages[1:])
    return start["status"], headers, body


def test_an_unexpected_exception() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    app = UnexpectedErrorMiddleware(failing)
    status, _, body = answer_of(app, "/v1/messages")
    assert status == 500 and anthropic_types.error(body).error.type == "api_error"
    status, _, body = answer_of(app, "/v1/chat/completions")
    assert status == 500 and json.loads(body)["error"]["type"] == "server_error"


def testtoo_many_connections() -> None:
    # The app a connection past the cap is given in place of the server's.
    status, headers, body = answer_of(limits.too_many_connections, "/v1/messages")
    assert status == 503 and headers["connection"] == "close"
    assert anthropic_types.error(body).error.type == "overloaded_error"
    status, headers, body = answer_of(limits.too_many_connections, "/v1/chat/completions")
    assert status == 503 and json.loads(body)["error"]["code"] == "too_many_connections"
