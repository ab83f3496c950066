"""The kinds of answer every route sends: a JSON document, an event stream, and a
stream of JSON lines (Ollama's API).

:class:`JSONResponse` writes its content as UTF-8 JSON with U+2028, U+2029 and U+0085
escaped (:mod:`.json_text` says why), whether it is given a pydantic model, JSON text
already written (:class:`JSONText`) or plain values. :class:`EventStreamResponse`
carries the headers every stream of the server has: the media type, no caching, and
no buffering by a proxy (nginx holds a response back unless told otherwise).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Mapping
from typing import Any, Protocol

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from .json_text import escape_line_separators

EVENT_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class JSONText(str):
    """A JSON document already written (a template filled in, pieces joined)."""


class DumpsJSON(Protocol):
    """A pydantic model: it writes its own JSON faster than ``json.dumps`` of a dump."""

    def model_dump_json(self) -> str: ...


class JSONResponse(Response):
    """A JSON answer. ``ascii_only`` writes every other character as a ``\\u`` escape
    too: for error messages, which may quote anything the client sent."""

    media_type = "application/json"

    def __init__(
        self,
        content: DumpsJSON | JSONText | Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        *,
        ascii_only: bool = False,
        background: BackgroundTask | None = None,
    ) -> None:
        self.ascii_only = ascii_only
        super().__init__(content, status_code, headers, background=background)

    def render(self, content: Any) -> bytes:
        if isinstance(content, JSONText):
            text = str(content)
        elif hasattr(content, "model_dump_json"):
            text = content.model_dump_json()
        else:
            text = json.dumps(content, ensure_ascii=self.ascii_only, separators=(",", ":"))
        return escape_line_separators(text).encode("utf-8")


class EventStreamResponse(StreamingResponse):
    """Server-sent events, with the stream headers and any ``headers`` of the route's."""

    def __init__(
        self, events: AsyncIterable[bytes], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={**EVENT_STREAM_HEADERS, **(headers or {})},
        )


class NDJSONResponse(StreamingResponse):
    """Newline-delimited JSON (one object a line), as Ollama's API streams, with the
    stream headers (no caching, no buffering by a proxy)."""

    def __init__(self, lines: AsyncIterable[bytes]) -> None:
        super().__init__(lines, media_type="application/x-ndjson", headers=EVENT_STREAM_HEADERS)
