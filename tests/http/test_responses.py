"""The two answer classes: JSON written with the line separators escaped (from a
pydantic model, JSON text or plain values; ASCII only when asked), and the event
stream with its headers."""

from __future__ import annotations

import json

import anyio
from pydantic import BaseModel

from picolm_server.http.responses import EventStreamResponse, JSONResponse, JSONText

SEPARATORS = "a\u2028b\u2029c\u0085d é"


class Sample(BaseModel):
    text: str


def test_json_from_a_model_text_and_values_escapes_the_line_separators() -> None:
    for content in (Sample(text=SEPARATORS), JSONText(json.dumps({"text": SEPARATORS},
                    ensure_ascii=False)), {"text": SEPARATORS}):  # fmt: skip
        response = JSONResponse(content)
        body = response.body.decode("utf-8")
        assert json.loads(body) == {"text": SEPARATORS}
        assert "\u2028" not in body and "\u2029" not in body and "\u0085" not in body
        assert "é" in body  # other characters stay UTF-8
        assert len(body.splitlines()) == 1
        assert response.media_type == "application/json"
        assert response.headers["content-type"] == "application/json"


def test_ascii_only_json_holds_any_text() -> None:
    response = JSONResponse({"m": "é \ud800"}, status_code=400, ascii_only=True)
    assert response.body.isascii()
    assert json.loads(response.body) == {"m": "é \ud800"}
    assert response.status_code == 400


def test_event_stream_carries_its_headers_and_the_routes() -> None:
    async def events() -> object:
        yield b"data: 1\n\n"

    response = EventStreamResponse(events(), {"x-extra": "1"})  # type: ignore[arg-type]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-extra"] == "1"
    sent: list[bytes] = []

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))  # type: ignore[arg-type]

    async def receive() -> dict[str, object]:
        await anyio.sleep_forever()
        return {}

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}, "method": "GET", "path": "/"}
    anyio.run(response, scope, receive, send)
    assert b"".join(sent) == b"data: 1\n\n"
