"""Every error answer of the server, in the envelope of the API the request came in on.

An error is an :class:`~picolm_server.errors.APIError` wherever it is raised (a route,
the key check, the body limit, the shutdown drain, the connection cap, an unexpected
exception); :func:`error_response` answers it. The API is told by the request's path,
through :data:`ENVELOPES`: Anthropic's Messages API on ``/v1/messages`` and below,
Ollama's API on ``/api`` and below, and OpenAI's envelope everywhere else. Another
API's envelope is one more entry.

The writers here build plain dicts and import nothing of the APIs: an error can be
answered on any path before that API's modules (and pydantic) are loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Scope

from ..errors import APIError
from ..observability.request_log import request_id_of
from .responses import JSONResponse

# What an envelope is written from: the error, and the request's id (None when the
# request log has not given one, as for a connection refused before the app).
BodyWriter = Callable[[APIError, str | None], dict[str, Any]]


def openai_body(error: APIError, request_id: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return error.to_dict()


# Anthropic's error types by status; its SDK picks the exception class by status.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_body(error: APIError, request_id: str | None = None) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}``: also the
    ``error`` event of a Messages stream that has started."""
    kind = anthropic_error_type(error.status_code)
    return {
        "type": "error",
        "error": {"type": kind, "message": error.message},
        "request_id": request_id,
    }


def ollama_message(error: APIError) -> str:
    """The message as Ollama words it where its clients match on it: an unknown model
    is ``model 'x' not found`` (its ``ResponseError`` carries it with the 404)."""
    model = getattr(error, "model", None)
    if error.code == "model_not_found" and isinstance(model, str):
        return f"model '{model}' not found"
    return error.message


def ollama_body(error: APIError, request_id: str | None = None) -> dict[str, Any]:
    """``{"error": "..."}``: also the line of an NDJSON stream that has started."""
    return {"error": ollama_message(error)}


@dataclass(frozen=True)
class Envelope:
    """One API's way of answering an error."""

    body: BodyWriter
    # Headers that carry the request's id for this API's clients, besides the request
    # log's ``x-request-id``: sent on every answer of its paths, errors or not.
    id_headers: tuple[str, ...] = field(default=())


OPENAI = Envelope(openai_body)
# Anthropic's SDK reads ``APIError.request_id`` from ``request-id``.
ANTHROPIC = Envelope(anthropic_body, id_headers=("request-id",))
OLLAMA = Envelope(ollama_body)

# (path prefix, envelope): a path is the prefix itself or below it; OpenAI's elsewhere.
ENVELOPES: tuple[tuple[str, Envelope], ...] = (("/v1/messages", ANTHROPIC), ("/api", OLLAMA))


def envelope_for(path: str) -> Envelope:
    """The envelope of the API that ``path`` belongs to."""
    for prefix, envelope in ENVELOPES:
        if path == prefix or path.startswith(prefix + "/"):
            return envelope
    return OPENAI


def id_headers(scope: Scope) -> dict[str, str]:
    """The request-id headers the API of this request sends beside ``x-request-id``."""
    request_id = request_id_of(scope)
    if request_id is None:
        return {}
    return dict.fromkeys(envelope_for(scope["path"]).id_headers, request_id)


def error_response(
    error: APIError, scope: Scope, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``error`` answered in the envelope of the request's API, with its status and
    headers (``Retry-After``, ``Allow``, ...) and ``headers`` added."""
    envelope = envelope_for(scope["path"])
    body = envelope.body(error, request_id_of(scope))
    return JSONResponse(
        body,
        status_code=error.status_code,
        headers={**error.headers, **id_headers(scope), **(headers or {})},
        ascii_only=True,  # the message may quote anything the client sent
    )
