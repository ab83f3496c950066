"""HTTP manners over HTTP: CORS, HEAD, 405 with Allow, the Bearer scheme, gzip, SSE pings;
on the application in-process (tests/support/inprocess.py)."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_API_KEY
from tests.http.test_errors import assert_error
from tests.http.test_requests import AUTH, user
from tests.support.inprocess import InProcessServer, serve_in_process
from tests.support.picolm_setup import MODEL_ID

ORIGIN = "http://app.example"


pytestmark = pytest.mark.anyio


@pytest.fixture
async def cors_server() -> AsyncIterator[InProcessServer]:
    """A key, one allowed origin, and pings every 0.1 s on a quiet stream."""
    server = {"api_key": TEST_API_KEY, "cors_origins": [ORIGIN], "sse_ping_seconds": 0.1}
    async with serve_in_process(server=server) as running:
        yield running


async def preflight(server: InProcessServer, origin: str = ORIGIN) -> httpx.Response:
    return await server.http().options(
        "/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


# ---- CORS ---------------------------------------------------------------------------------


async def test_a_preflight_without_the_key_gets_the_cors_answer(
    cors_server: InProcessServer,
) -> None:
    response = await preflight(cors_server)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert response.headers["x-request-id"]


async def test_an_error_response_carries_the_cors_headers(cors_server: InProcessServer) -> None:
    response = await cors_server.http().post(
        "/v1/chat/completions",
        json={"model": MODEL_ID, "messages": user("hi")},
        headers={"Origin": ORIGIN},
    )
    assert_error(response, 401, type_="invalid_request_error", code="invalid_api_key")
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "retry-after" in exposed
    assert "x-session-id" in exposed  # what a balancer keys conversations on


async def test_an_allowed_origin_gets_the_answer(cors_server: InProcessServer) -> None:
    response = await cors_server.http().get("/v1/models", headers={**AUTH, "Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN


async def test_another_origin_is_not_allowed(cors_server: InProcessServer) -> None:
    assert (await preflight(cors_server, "http://evil.example")).status_code == 400
    response = await cors_server.http().get(
        "/v1/models", headers={**AUTH, "Origin": "http://evil.example"}
    )
    assert "access-control-allow-origin" not in response.headers


async def test_without_cors_origins_browsers_get_no_cors(app_server: InProcessServer) -> None:
    response = await preflight(app_server)
    assert "access-control-allow-origin" not in response.headers
    response = await app_server.http().get("/health", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers


async def test_any_origin_with_a_star() -> None:
    async with serve_in_process(server={"api_key": "", "cors_origins": "*"}) as server:
        answer = await preflight(server, "http://anything.example")
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "*"
        response = await server.http().get("/v1/models", headers={"Origin": "http://x.test"})
        assert response.headers["access-control-allow-origin"] == "*"


# ---- HEAD, 405 and Allow --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/models", f"/v1/models/{MODEL_ID}", "/health", "/"])
async def test_head_wherever_get_works(cors_server: InProcessServer, path: str) -> None:
    headers = {**AUTH, "Accept-Encoding": "identity"}
    got = await cors_server.http().get(path, headers=headers)
    head = await cors_server.http().head(path, headers=headers)
    assert got.status_code == head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert int(head.headers["content-length"]) == len(got.content)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/models", "GET, HEAD"),
        ("POST", f"/v1/models/{MODEL_ID}", "GET, HEAD"),
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/health", "GET, HEAD"),
    ],
)
async def test_a_wrong_method_is_405_with_allow(
    cors_server: InProcessServer, method: str, path: str, allowed: str
) -> None:
    response = await cors_server.http().request(method, path, headers=AUTH)
    error = assert_error(response, 405, type_="invalid_request_error")
    assert method in error["message"]
    assert response.headers["allow"] == allowed


# ---- the Bearer scheme ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_the_bearer_scheme_in_any_case(cors_server: InProcessServer, scheme: str) -> None:
    response = await cors_server.http().get(
        "/v1/models",
        headers={"Authorization": f"{scheme} {TEST_API_KEY}"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "value", [f"Basic {TEST_API_KEY}", TEST_API_KEY, f"Bearer{TEST_API_KEY}", "Bearer"]
)
async def test_other_schemes_are_refused(cors_server: InProcessServer, value: str) -> None:
    response = await cors_server.http().get("/v1/models", headers={"Authorization": value})
    assert_error(response, 401, type_="invalid_request_error", code="invalid_api_key")


# ---- gzip -----------------------------------------------------------------------------------


async def long_chat(server: InProcessServer, encoding: str, **extra: Any) -> httpx.Response:
    """A reply of 200 words (the engine runs to the budget), the raw bytes as they came
    over the wire in ``response.content``."""
    body = {"model": MODEL_ID, "messages": user("gzip"), "max_tokens": 200, "temperature": 0}
    http = server.http(headers={**AUTH, "Accept-Encoding": encoding})
    request = http.build_request("POST", "/v1/chat/completions", json={**body, **extra})
    response = await http.send(request, stream=True)
    raw = b"".join([chunk async for chunk in response.aiter_raw()])
    await response.aclose()
    response._content = raw
    return response


async def test_gzip_when_the_client_asks_and_not_otherwise(cors_server: InProcessServer) -> None:
    compressed = await long_chat(cors_server, "gzip")
    assert compressed.status_code == 200
    assert compressed.headers["content-encoding"] == "gzip"
    assert int(compressed.headers["content-length"]) == len(compressed.content)
    unpacked = gzip.decompress(compressed.content)
    plain = await long_chat(cors_server, "identity")
    assert "content-encoding" not in plain.headers
    assert len(plain.content) > len(compressed.content)
    reply = json.loads(unpacked)["choices"][0]["message"]["content"]
    assert reply == json.loads(plain.content)["choices"][0]["message"]["content"]
    assert len(reply.split()) == 200


async def test_never_gzip_for_an_event_stream(cors_server: InProcessServer) -> None:
    response = await long_chat(cors_server, "gzip", stream=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in response.headers
    assert response.content.rstrip().endswith(b"data: [DONE]")


# ---- SSE pings ------------------------------------------------------------------------------


def slow_stream_body(tag: str) -> dict[str, Any]:
    # The engine sleeps before every token, the first included: quiet time before it.
    return {
        "model": MODEL_ID,
        "messages": user(f"{tag} [[slow:0.5]] [[reply:un deux]]"),
        "stream": True,
    }


async def test_pings_while_waiting_for_the_first_token(cors_server: InProcessServer) -> None:
    response = await cors_server.http().post(
        "/v1/chat/completions",
        json=slow_stream_body("raw"),
        headers=AUTH,
        timeout=30,
    )
    events = [event for event in response.text.split("\n\n") if event]
    assert events[-1] == "data: [DONE]"

    def has_content(event: str) -> bool:
        return event.startswith("data: {") and bool(
            json.loads(event[6:])["choices"][0]["delta"].get("content")
        )

    first_content = next(index for index, event in enumerate(events) if has_content(event))
    # The role chunk, then pings while the prompt and first token are computed.
    assert ": ping" in events[1:first_content]
    assert all(event == ": ping" or event.startswith("data: ") for event in events)


async def test_the_openai_sdk_skips_the_pings(cors_server: InProcessServer) -> None:
    client = cors_server.client(max_retries=0, timeout=30)
    stream = await client.chat.completions.create(**slow_stream_body("sdk"))
    text = "".join(
        [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    )
    assert text == "un deux"


async def test_no_pings_when_turned_off() -> None:
    async with serve_in_process(server={"api_key": "", "sse_ping_seconds": 0}) as server:
        response = await server.http().post(
            "/v1/chat/completions",
            json={**slow_stream_body("off"), "messages": user("[[slow:0.3]] [[reply:a b]]")},
            timeout=30,
        )
    assert response.status_code == 200
    assert ": ping" not in response.text
