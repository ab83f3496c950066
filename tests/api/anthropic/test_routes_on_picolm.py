"""The Messages API end to end on a real server driving the PicoLM stand-in, through the
official ``anthropic`` SDK: a reply and a stream over a socket, token by token as the
engine's process writes them, and the engine's exit reported in Anthropic's envelope.
The wire format itself is tested in-process in test_routes.py."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from tests.api.anthropic.test_routes import (
    BASE,
    GREETING,
    STREAMED_TEXT,
    assert_error,
    assert_greeting,
    assert_streamed,
    sdk_params,
    user,
)
from tests.support import anthropic_types
from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL
from tests.support.picolm_setup import PicoLMServer
from tests.support.server import RunningServer


def sdk_client(server: RunningServer, **kwargs: Any) -> anthropic.Anthropic:
    options: dict[str, Any] = {"api_key": server.api_key or "unused", "max_retries": 0}
    return anthropic.Anthropic(base_url=server.base_url, **{**options, **kwargs})


def create(client: anthropic.Anthropic, **params: Any) -> anthropic.types.Message:
    """messages.create, with the raw body checked strictly against the SDK's types."""
    raw = client.messages.with_raw_response.create(**sdk_params(params))
    checked = anthropic_types.message(raw.http_response.content)
    message = raw.parse()
    assert message == checked
    return message


def raw_stream(server: RunningServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A streamed request's events, each checked strictly against the SDK's types."""
    response = httpx.post(
        f"{server.base_url}/v1/messages",
        json={**body, "stream": True},
        headers={"x-api-key": server.api_key},
        timeout=900,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for name, data in anthropic_types.parse_sse(response.content):
        anthropic_types.stream_event(name, data)
        events.append((name, json.loads(data)))
    return events


@pytest.fixture(scope="module")
def pico_client(picolm_server: PicoLMServer) -> anthropic.Anthropic:
    return sdk_client(picolm_server.server)


def test_create_and_stream_end_to_end(
    picolm_server: PicoLMServer, pico_client: anthropic.Anthropic
) -> None:
    assert_greeting(create(pico_client, **GREETING))
    params: dict[str, Any] = {
        "model": PICOLM_MODEL,
        "max_tokens": 40,
        # Slow tokens: without a pause, tokens already in the pipe arrive as one piece.
        "messages": user(f"[[reply:{STREAMED_TEXT}]] [[slow:0.05]]"),
    }
    with pico_client.messages.stream(**sdk_params(params)) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    whole = create(pico_client, **params)
    assert_streamed(pieces, final, whole, raw_stream(picolm_server.server, params))


def post(server: PicoLMServer, body: Any, path: str = "/v1/messages") -> httpx.Response:
    return httpx.post(
        f"{server.base_url}{path}", headers={"x-api-key": server.api_key}, timeout=60, json=body
    )


def test_engine_failure(picolm_server: PicoLMServer, pico_client: anthropic.Anthropic) -> None:
    """The engine's process exiting with status 3: a 500 ``api_error`` before the
    stream starts, the ``error`` event after."""
    body = {**BASE, "messages": user("[[crash]]")}
    message = assert_error(post(picolm_server, body), 500, "api_error")
    assert "exited with status 3" in message
    response = post(picolm_server, {**body, "stream": True})
    assert response.status_code == 200
    events = anthropic_types.parse_sse(response.content)
    name, data = events[-1]
    assert name == "error"
    assert "exited with status 3" in anthropic_types.stream_event(name, data).error.message
    with (
        pytest.raises(anthropic.APIStatusError),
        pico_client.messages.stream(**sdk_params(body)) as stream,
    ):
        stream.get_final_message()
