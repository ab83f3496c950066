"""U+2028, U+2029 and U+0085 never reach a client raw: they are escaped in every JSON
document, so clients that split lines on them (Python's ``str.splitlines``) still get
whole events."""

from __future__ import annotations

import json

import httpx

from tests.http.test_requests import AUTH, post_chat, user
from tests.support.picolm_setup import PicoLMServer

SEPARATORS = "\u2028\u2029\u0085"
TEXT = "one\u2028two\u2029three\u0085four"
RAW = [char.encode("utf-8") for char in SEPARATORS]


def assert_no_raw_separator(body: bytes) -> None:
    for raw in RAW:
        assert raw not in body, body


def test_stream_escapes_line_separators(picolm_server: PicoLMServer) -> None:
    body = {"messages": user(f"[[reply:{TEXT}]]"), "stream": True}
    response = post_chat(picolm_server, body)
    assert response.status_code == 200
    assert_no_raw_separator(response.content)
    # A client splitting on every line break Python knows still sees whole events.
    lines = [line for line in response.text.splitlines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    content = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert content == TEXT


def test_completion_escapes_line_separators(picolm_server: PicoLMServer) -> None:
    response = post_chat(picolm_server, {"messages": user(f"[[reply:{TEXT}]]")})
    assert response.status_code == 200
    assert_no_raw_separator(response.content)
    assert len(response.text.splitlines()) == 1
    assert response.json()["choices"][0]["message"]["content"] == TEXT


def test_error_quoting_the_request_escapes_line_separators(picolm_server: PicoLMServer) -> None:
    response = httpx.post(
        f"{picolm_server.base_url}/v1/chat/completions",
        json={"model": f"no{SEPARATORS}such", "messages": user("hi")},
        headers=AUTH,
    )
    assert response.status_code == 404
    assert_no_raw_separator(response.content)
    assert f"no{SEPARATORS}such" in response.json()["error"]["message"]
