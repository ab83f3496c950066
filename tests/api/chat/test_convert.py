"""Chat requests reduced to the core's spec: pure conversions, without HTTP or an engine."""

from __future__ import annotations

from typing import Any

import pytest

from picolm_server.api.chat.convert import (
    chat_spec,
    message_text,
    refuse_unsupported,
    template_messages,
)
from picolm_server.api.chat.types import ChatCompletionRequest
from picolm_server.errors import InvalidRequestError
from picolm_server.generation import Conversation


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


def test_chat_spec_carries_stops_sampling_and_the_newer_max_tokens() -> None:
    spec = chat_spec(request(stop="END", temperature=0, top_p=0.5, seed=11, max_tokens=9))
    assert spec.stop == ("END",)
    assert (spec.sampling.temperature, spec.sampling.top_p, spec.sampling.seed) == (0, 0.5, 11)
    assert spec.max_tokens == 9
    assert chat_spec(request(stop=["a", "b"])).stop == ("a", "b")
    # max_completion_tokens is the newer name and wins.
    assert chat_spec(request(max_tokens=9, max_completion_tokens=4)).max_tokens == 4
    plain = chat_spec(request())
    assert (plain.stop, plain.max_tokens, plain.sampling.temperature) == ((), None, None)
    assert isinstance(plain.prompt, Conversation)
    assert plain.prompt.messages == ({"role": "user", "content": "hi"},)


def test_chat_spec_names_the_field_holding_a_nul() -> None:
    spec = chat_spec(request(messages=[{"role": "user", "content": "a"},
                                       {"role": "user", "content": "b\u0000"}]))  # fmt: skip
    assert isinstance(spec.prompt, Conversation) and spec.prompt.locate_nul is not None
    assert spec.prompt.locate_nul() == "messages[1].content"
