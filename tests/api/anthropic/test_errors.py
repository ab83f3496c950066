"""Anthropic's error envelope: types by status, validation errors named as Anthropic
names them, and the rewrite of error answers on the Messages paths."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from picolm_server.api.anthropic.envelope import is_messages_path
from picolm_server.api.anthropic.errors import (
    anthropic_error_body,
    error_response,
    error_type,
    validation_error,
)
from picolm_server.api.anthropic.types import MessagesRequest
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
    assert error_type(status) == kind
    body = error_response(status, "m").model_dump_json()
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
    assert is_messages_path("/v1/messages")
    assert is_messages_path("/v1/messages/count_tokens")
    assert not is_messages_path("/v1/messagesx")
    assert not is_messages_path("/v1/chat/completions")


def test_rewrite_of_an_openai_body() -> None:
    openai_body = (
        b'{"error": {"message": "busy", "type": "rate_limit_error", "param": null, "code": null}}'
    )
    rewritten = anthropic_error_body(openai_body, 429, "req_1")
    assert rewritten is not None
    error = anthropic_types.error(rewritten)
    assert error.error.type == "rate_limit_error"
    assert json.loads(rewritten)["request_id"] == "req_1"
    assert anthropic_error_body(b"not json", 500, "req_1") is None
    assert anthropic_error_body(rewritten, 429, "req_1") is None  # already Anthropic's
