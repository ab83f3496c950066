"""Anthropic's error envelope on the Messages routes.

Every error of the server is an :class:`~picolm_server.errors.APIError`, answered in
OpenAI's envelope wherever it is raised (a route, the key check, the body limit, the
shutdown drain). On the Messages routes :class:`~.envelope.AnthropicErrorMiddleware`
rewrites each such answer with :func:`anthropic_error_body` into ``{"type": "error",
"error": {"type", "message"}}`` with the same status and headers (``Retry-After`` on a
429 included): one place, so no error on these routes can reach a client in the other
envelope. Errors in a stream that has started are written by :mod:`.events` with
:func:`error_response`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from ...errors import APIError, InvalidRequestError
from .types import SUPPORTED_BLOCK_TYPES, ErrorObject, ErrorResponse, ErrorType

_TYPE_BY_STATUS: dict[int, ErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_type(status: int) -> ErrorType:
    """Anthropic's error type for an HTTP status (its SDK picks exceptions by status)."""
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_response(status: int, message: str, request_id: str | None = None) -> ErrorResponse:
    return ErrorResponse(
        error=ErrorObject(type=error_type(status), message=message), request_id=request_id
    )


def api_error_response(error: APIError, request_id: str | None = None) -> ErrorResponse:
    return error_response(error.status_code, error.message, request_id)


# ---- request validation ------------------------------------------------------------------


def _location(parts: tuple[int | str, ...]) -> Iterator[str]:
    # pydantic adds the union member it tried (``str``, ``list[...]``, a tag such as
    # ``text``) to an error's location; only field names and list indexes are kept.
    tags = {"str", "int", "float", "bool", "dict", "list", "none", *SUPPORTED_BLOCK_TYPES}
    tags |= {"auto", "any", "tool"}
    for part in parts:
        if isinstance(part, int):
            yield str(part)
        elif part not in tags and "[" not in part and "-" not in part:
            yield part


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """A pydantic error as Anthropic words one: ``messages.0.content.1.type: ...``."""
    errors = exc.errors()
    for error in errors:
        # Content given as blocks fails as a string too: the block's own error says more.
        path = ".".join(_location(tuple(error["loc"])))
        context: dict[str, Any] = dict(error.get("ctx") or {})
        if error["type"] == "union_tag_invalid" and ".content" in f".{path}":
            return unsupported_block(path, str(context.get("tag")))
        if error["type"] == "literal_error" and _is_block(path):
            return unsupported_block(path.rsplit(".", 1)[0], str(error.get("input")))
    error = next((e for e in errors if "str" not in e["loc"]), errors[0])
    path = ".".join(_location(tuple(error["loc"])))
    kind = error["type"]
    context = dict(error.get("ctx") or {})
    if kind == "missing":
        return InvalidRequestError(f"{path}: Field required", param=path)
    if kind == "union_tag_invalid":
        message = (
            f"{path}: type {context.get('tag')!r} is not one of {context.get('expected_tags')}"
        )
        return InvalidRequestError(message, param=path)
    return InvalidRequestError(f"{path}: {error['msg']}" if path else error["msg"], param=path)


def _is_block(path: str) -> bool:
    """A ``type`` inside a list of content blocks (``...content.2.type``)."""
    parts = path.split(".")
    return len(parts) >= 3 and parts[-1] == "type" and parts[-2].isdigit() and "content" in parts


def unsupported_block(path: str, block_type: str) -> InvalidRequestError:
    supported = ", ".join(SUPPORTED_BLOCK_TYPES)
    return InvalidRequestError(
        f"{path}: content blocks of type {block_type!r} are not supported by this server "
        f"(it takes {supported}).",
        param=path,
    )


# ---- the envelope on every answer of these routes ------------------------------------------


def anthropic_error_body(body: bytes, status: int, request_id: str | None) -> bytes | None:
    """The Anthropic body for an OpenAI error body, or None when it is not one."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("error"), dict):
        return None
    if document.get("type") == "error":
        return None  # already Anthropic's
    message = document["error"].get("message")
    return error_response(status, str(message), request_id).model_dump_json().encode()
