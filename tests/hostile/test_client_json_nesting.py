"""JSON text that a client sends inside a string field (a function call's ``arguments``)
nested deeper than the parser's recursion limit: a 400 naming the field, never a 500.

``json.loads`` raises ``RecursionError`` there, not ``ValueError``: a 2.4 KB body of
1,200 ``[`` and as many ``]`` was a 500 on both APIs.
"""

from __future__ import annotations

import httpx
import pytest

from tests.http.test_errors import assert_error
from tests.http.test_requests import AUTH
from tests.support.picolm_setup import MODEL_ID, PicoLMServer

DEEP = "[" * 1200 + "]" * 1200


def test_chat_assistant_call_arguments(picolm_server: PicoLMServer) -> None:
    messages = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "f", "arguments": DEEP}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "tool", "tool_call_id": "c2", "content": "ok"},
    ]
    response = httpx.post(
        f"{picolm_server.base_url}/v1/chat/completions",
        json={"model": MODEL_ID, "messages": messages},
        headers=AUTH,
        timeout=30,
    )
    error = assert_error(response, 400, type_="invalid_request_error", code="invalid_value")
    assert error["param"] == "messages[1].tool_calls[1].function.arguments"
    assert "nested too deeply" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_responses_function_call_arguments(picolm_server: PicoLMServer, stream: bool) -> None:
    items = [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": DEEP},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ]
    response = httpx.post(
        f"{picolm_server.base_url}/v1/responses",
        json={"model": MODEL_ID, "input": items, "stream": stream, "store": False},
        headers=AUTH,
        timeout=30,
    )
    error = assert_error(response, 400, type_="invalid_request_error", code="invalid_value")
    assert error["param"] == "input[1].arguments"


def test_arguments_that_are_not_json_still_reach_the_template(
    picolm_server: PicoLMServer,
) -> None:
    # Text that is not JSON is kept as text (templates print it), as before.
    items = [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "not json"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"role": "user", "content": "[[reply:fine]]"},
    ]
    response = httpx.post(
        f"{picolm_server.base_url}/v1/responses",
        json={"model": MODEL_ID, "input": items, "store": False},
        headers=AUTH,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["output"][0]["content"][0]["text"] == "fine"
