"""Request types are strict, as OpenAI's are: no string, boolean or fractional value is
taken for another type; every refusal is a 400 in the envelope naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.http.test_errors import assert_error
from tests.http.test_requests import post_chat, user
from tests.support.picolm_setup import PicoLMServer

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
}

REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"stream": "yes"}, "stream"),
    ({"stream": "true"}, "stream"),
    ({"stream": 1}, "stream"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": "4"}, "max_tokens"),
    ({"max_tokens": 4.0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_completion_tokens": False}, "max_completion_tokens"),
    ({"temperature": "0.5"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_p": "1"}, "top_p"),
    ({"seed": 7.0}, "seed"),
    ({"seed": "7"}, "seed"),
    ({"n": True}, "n"),
    ({"logprobs": "false"}, "logprobs"),
    ({"logprobs": 0}, "logprobs"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"frequency_penalty": "0"}, "frequency_penalty"),
    ({"logit_bias": {"50256": "-100"}}, "logit_bias.50256"),
    ({"user": 5}, "user"),
    ({"model": 5}, "model"),
    ({"stop": 5}, "stop"),
    ({"stop": [5]}, "stop"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        "messages[0].content",
    ),
    ({"messages": [{"role": "user", "content": "hi", "name": 5}]}, "messages[0].name"),
    (
        {"tools": [{**WEATHER_TOOL, "function": {"name": "weather", "strict": "yes"}}]},
        "tools[0].function.strict",
    ),
]


@pytest.mark.parametrize(("fields", "param"), REFUSED, ids=[str(case[0]) for case in REFUSED])
def test_coercible_value_of_the_wrong_type_is_refused(
    picolm_server: PicoLMServer, fields: dict[str, Any], param: str
) -> None:
    body = {"messages": user("[[reply:ok]]"), **fields}
    error = assert_error(
        post_chat(picolm_server, body), 400, type_="invalid_request_error", code="invalid_value"
    )
    assert error["param"] == param, error


ACCEPTED: list[dict[str, Any]] = [
    {"temperature": 1},
    {"temperature": 0},
    {"top_p": 1},
    {"frequency_penalty": 0, "presence_penalty": -1},
    {"logit_bias": {"50256": -100}},
    {"max_tokens": 4, "seed": 7},
    {"max_completion_tokens": 4, "n": 1, "logprobs": False},
    {"stream": False, "parallel_tool_calls": True},
    {"stop": ["\n\n"], "user": "someone"},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "[[reply:ok]]"}]}]},
]


@pytest.mark.parametrize("fields", ACCEPTED, ids=[str(case) for case in ACCEPTED])
def test_values_of_the_right_type_are_accepted(
    picolm_server: PicoLMServer, fields: dict[str, Any]
) -> None:
    body = {"messages": user("[[reply:ok]]"), **fields}
    response = post_chat(picolm_server, body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "ok"


def test_streamed_request_with_a_real_boolean_still_streams(picolm_server: PicoLMServer) -> None:
    response = post_chat(picolm_server, {"messages": user("[[reply:ok]]"), "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
