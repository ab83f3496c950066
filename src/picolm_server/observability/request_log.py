"""Every request's id, log line and metrics, from one outermost middleware.

Each request gets a :class:`~.observation.RequestRecord`: the id the client sent in
``X-Request-ID`` when it is sane (short, plain characters), a new one otherwise, and it
goes back in the response's ``X-Request-ID`` (and a reply held to a schema found in the
prompt says so in ``x-picolm-schema-source: prompt``). The chat route hands the record to the
serving layer as its :class:`~.observation.GenerationObserver`, which fills in the model,
the token counts and the time to first token. When the response is complete, the record
is counted in the metrics and written as one log line (``logging.log_requests``).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ServerMetrics
from .observation import NO_OBSERVER, GenerationObserver, RequestRecord

access_logger = logging.getLogger("picolm_server.access")

REQUEST_ID_HEADER = b"x-request-id"
# Says where the reply's JSON Schema came from when the request did not send it
# ("prompt": found in its messages, see tool_calls/prompt_schema.py).
SCHEMA_SOURCE_HEADER = b"x-picolm-schema-source"
# An id the client sends is kept when it could not upset a log reader or a header: at
# most 128 of these characters (UUIDs, hex, base64 and most tracing ids fit).
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._~:+/=@-]{1,128}")
_STATE_KEY = "picolm_request"


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER and _SANE_REQUEST_ID.fullmatch(value):
            return value.decode("ascii")
    return uuid.uuid4().hex


def request_id_of(scope: Scope) -> str | None:
    """The id the request log gave this request (None outside the middleware)."""
    record: RequestRecord | None = scope.get("state", {}).get(_STATE_KEY)
    return None if record is None else record.request_id


def observer_of(scope: Scope) -> GenerationObserver:
    """The request's record as the serving layer's observer (a no-op outside the
    middleware, e.g. when the app is driven without it)."""
    record: RequestRecord | None = scope.get("state", {}).get(_STATE_KEY)
    return record if record is not None else NO_OBSERVER


def _route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The path template of the route that answered; for a request answered before
    routing (a wrong key, a preflight), the route that would have."""
    route = scope.get("route")
    if route is None:
        route = next((r for r in routes if r.matches(scope)[0] != Match.NONE), None)
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else ""


def log_fields(record: RequestRecord) -> dict[str, Any]:
    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1000, 1)

    return {
        "request_id": record.request_id,
        "method": record.method,
        "path": record.path,
        "route": record.route,
        "status": record.status,
        "model": record.model,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cached_tokens": record.cached_tokens,
        "ttft_ms": ms(record.ttft_seconds),
        "duration_ms": ms(record.duration_seconds),
        "disconnected": record.disconnected,
        "engine_error": record.engine_error,
        "schema_source": record.schema_source,
    }


def _log(record: RequestRecord) -> None:
    text = f"{record.method} {record.path} {record.status} {record.duration_seconds or 0:.3f}s"
    text += f" id={record.request_id}"
    if record.model is not None:
        text += f" model={record.model}"
    if record.prompt_tokens is not None:
        text += (
            f" tokens={record.prompt_tokens}+{record.completion_tokens}"
            f" cached={record.cached_tokens}"
        )
    if record.ttft_seconds is not None:
        text += f" ttft={record.ttft_seconds:.3f}s"
    if record.schema_source is not None:
        text += f" schema={record.schema_source}"
    if record.engine_error is not None:
        text += f" engine_{record.engine_error}"
    if record.disconnected:
        text += " client_disconnected"
    # The text goes through %s: a client-chosen path must not be read as a format string.
    access_logger.info("%s", text, extra=log_fields(record))


class RequestLogMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServerMetrics,
        log_requests: bool,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(
            request_id=request_id_from(scope["headers"]),
            method=scope["method"],
            path=scope["path"],
        )
        scope.setdefault("state", {})[_STATE_KEY] = record
        id_header = (REQUEST_ID_HEADER, record.request_id.encode("ascii"))
        finished = False

        def finish() -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            record.finish()
            record.route = _route_template(scope, self.routes)
            self.metrics.request_finished(record)
            if self.log_requests:
                _log(record)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != REQUEST_ID_HEADER
                ]
                headers.append(id_header)
                if record.schema_source is not None:
                    headers.append((SCHEMA_SOURCE_HEADER, record.schema_source.encode("ascii")))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Counted before the last bytes go out: a client that reads /metrics as
                # soon as it has this response must find it counted.
                finish()
            try:
                await send(message)
            except OSError:  # the server's word for a client that has gone
                record.disconnected = True
                raise

        async def receive_noting_disconnect() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not finished:
                record.disconnected = True
            return message

        self.metrics.request_started()
        try:
            await self.app(scope, receive_noting_disconnect, send_with_id)
        finally:
            finish()
