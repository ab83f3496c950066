"""Anthropic's error envelope: types by status, validation errors named as Anthropic
names them, and the envelope chosen for the Messages paths."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from picolm_server.api.anthropic.errors import validation_error
from picolm_server.api.anthropic.types import MessagesRequest
from picolm_server.errors import APIError, QueueFullError
from picolm_server.http.errors import ANTHROPIC, anthropic_body, anthropic_error_type, envelope_for
from tests.support import anthropic_types


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (502, "api_error"),
    ],
)
def test_types_by_status(status: int, kind: str) -> None:
    assert anthropic_error_type(status) == kind
    error = APIError("m")
    error.status_code = status
    body = json.dumps(anthropic_body(error))
    assert anthropic_types.error(body).error.type == kind


def error_for(body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        MessagesRequest.model_validate(body)
    return validation_error(caught.value).message


BASE: dict[str, Any] = {
    "model": "m",
    "max_tokens": 5,
    "messages": [{"role": "user", "content": "x"}],
}


def test_missing_field() -> None:
    body = {key: value for key, value in BASE.items() if key != "max_tokens"}
    assert error_for(body) == "max_tokens: Field required"


def test_unsupported_block_is_named_with_its_place() -> None:
    content = [{"type": "text", "text": "a"}, {"type": "image", "source": {}}]
    message = error_for({**BASE, "messages": [{"role": "user", "content": content}]})
    assert message.startswith("messages.0.content.1: content blocks of type 'image'")
    nested = [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]}]
    message = error_for({**BASE, "messages": [{"role": "user", "content": nested}]})
    assert message.startswith("messages.0.content.0.content.0: content blocks of type 'document'")


def test_strict_types() -> None:
    assert error_for({**BASE, "max_tokens": "5"}).startswith("max_tokens:")
    assert error_for({**BASE, "stream": "yes"}).startswith("stream:")


def test_paths() -> None:
    assert envelope_for("/v1/messages") is ANTHROPIC
    assert envelope_for("/v1/messages/count_tokens") is ANTHROPIC
    assert envelope_for("/v1/messagesx") is not ANTHROPIC
    assert envelope_for("/v1/chat/completions") is not ANTHROPIC


def test_body_of_an_error() -> None:
    body = json.dumps(anthropic_body(QueueFullError("busy"), "req_1"))
    error = anthropic_types.error(body)
    assert error.error.type == "rate_limit_error"
    assert json.loads(body)["request_id"] == "req_1"
