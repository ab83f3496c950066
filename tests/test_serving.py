"""The pure conversions of the serving layer, without HTTP or an engine."""

from __future__ import annotations

from typing import Any

import pytest

from picolm_server.chat_template import ChatTemplate, builtin_template_source
from picolm_server.config import GenerationDefaults
from picolm_server.errors import InvalidRequestError
from picolm_server.protocol import ChatCompletionRequest
from picolm_server.serving import (
    generation_request,
    message_text,
    refuse_unsupported,
    stop_strings,
    template_messages,
)


def request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 3}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 1}, "top_logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"web_search_options": {}}, "web_search_options"),
    ],
)
def test_misleading_parameters_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        refuse_unsupported(request(**fields))
    assert caught.value.param == param


def test_harmless_parameters_accepted() -> None:
    refuse_unsupported(
        request(n=1, logprobs=False, user="u", store=True, metadata={"a": "b"},
                frequency_penalty=1.0, service_tier="auto", modalities=["text"])
    )  # fmt: skip


def test_message_text_joins_text_parts() -> None:
    parsed = request(
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                               {"type": "text", "text": "b"}]}]
    )  # fmt: skip
    assert message_text(parsed.messages[0], 0) == "a\nb"


def test_non_text_parts_refused_with_their_path() -> None:
    parsed = request(
        messages=[
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "image_url", "image_url": {"url": "x"}}]},
        ]
    )  # fmt: skip
    with pytest.raises(InvalidRequestError) as caught:
        template_messages(parsed.messages)
    assert caught.value.param == "messages[1].content[1].type"


def test_template_messages_conventions() -> None:
    parsed = request(
        messages=[
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": "q", "name": "bob"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "f", "arguments": '{"x": 1}'}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ]
    )  # fmt: skip
    converted = template_messages(parsed.messages)
    assert converted[0] == {"role": "system", "content": "rules"}
    assert converted[1]["name"] == "bob"
    assert converted[2]["content"] == ""
    assert converted[2]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    assert converted[3]["tool_call_id"] == "c1"


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "user"}, "messages[0].content"),
        ({"role": "system", "content": None}, "messages[0].content"),
        ({"role": "tool", "content": "x"}, "messages[0].tool_call_id"),
    ],
)
def test_required_message_fields(message: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        template_messages(request(messages=[message]).messages)
    assert caught.value.param == param


def test_stop_strings_add_the_template_end_markers() -> None:
    template = ChatTemplate("zephyr", builtin_template_source("zephyr"), eos_token="</s>")
    assert stop_strings(request(stop="END"), template) == ["END", "</s>"]
    assert stop_strings(request(stop=["a", "b"]), template) == ["a", "b", "</s>"]
    assert stop_strings(request(), template) == ["</s>"]


def test_generation_request_defaults_and_overrides() -> None:
    defaults = GenerationDefaults(max_tokens=50, temperature=0.3, top_p=0.8)
    plain = generation_request(request(), "P", defaults)
    assert (plain.prompt, plain.max_tokens, plain.temperature, plain.top_p) == ("P", 50, 0.3, 0.8)
    assert plain.seed is not None
    custom = generation_request(
        request(max_tokens=9, temperature=0, top_p=0.5, seed=11), "P", defaults
    )
    assert (custom.max_tokens, custom.temperature, custom.top_p, custom.seed) == (9, 0, 0.5, 11)
    # max_completion_tokens is the newer name and wins.
    both = generation_request(request(max_tokens=9, max_completion_tokens=4), "P", defaults)
    assert both.max_tokens == 4
    # top_p 0 would make the engine's sampling undefined: kept just above 0.
    assert generation_request(request(top_p=0), "P", defaults).top_p > 0
