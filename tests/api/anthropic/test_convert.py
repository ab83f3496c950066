"""Anthropic requests as the generation core's input: turns, tools, tool choice,
sampling, stop sequences, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from picolm_server.api.anthropic.convert import count_spec, generation_spec
from picolm_server.api.anthropic.types import CountTokensRequest, MessagesRequest
from picolm_server.errors import InvalidRequestError
from picolm_server.generation import Conversation, NamedTool

TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}


def request(**fields: Any) -> MessagesRequest:
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": 7,
        "messages": [{"role": "user", "content": "hi"}],
    }
    return MessagesRequest.model_validate({**body, **fields})


def turns_of(**fields: Any) -> tuple[dict[str, Any], ...]:
    prompt = generation_spec(request(**fields)).prompt
    assert isinstance(prompt, Conversation)
    return prompt.messages


def test_system_string_and_blocks() -> None:
    assert turns_of(system="Be brief.")[0] == {"role": "system", "content": "Be brief."}
    blocks = [
        {"type": "text", "text": "A."},
        {"type": "text", "text": "B.", "cache_control": {"type": "ephemeral"}},
    ]
    assert turns_of(system=blocks)[0] == {"role": "system", "content": "A.\nB."}
    assert turns_of(system=[])[0]["role"] == "user"


def test_system_message_mid_conversation() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "system", "content": [{"type": "text", "text": "Now be formal."}]},
        {"role": "user", "content": "b"},
    ]
    assert turns_of(messages=messages)[1] == {"role": "system", "content": "Now be formal."}


def test_tool_use_and_tool_results() -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_3",
                    "content": "no such city",
                    "is_error": True,
                },
                {"type": "tool_result", "tool_use_id": "toolu_4"},
                {"type": "text", "text": "Thanks."},
            ],
        },
    ]
    assert turns_of(messages=messages) == (
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": "18C", "tool_call_id": "toolu_1"},
        {"role": "tool", "content": "a\nb", "tool_call_id": "toolu_2"},
        {"role": "tool", "content": "Error: no such city", "tool_call_id": "toolu_3"},
        {"role": "tool", "content": "", "tool_call_id": "toolu_4"},
        {"role": "user", "content": "Thanks."},
    )


@pytest.mark.parametrize(
    ("choice", "mode", "parallel"),
    [
        (None, None, None),
        ({"type": "auto"}, "auto", None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any"}, "required", None),
        ({"type": "any", "disable_parallel_tool_use": False}, "required", None),
        ({"type": "tool", "name": "get_weather"}, NamedTool("get_weather"), None),
        ({"type": "none"}, "none", None),
    ],
)
def test_tool_choice(choice: dict[str, Any] | None, mode: Any, parallel: bool | None) -> None:
    output = generation_spec(request(tools=[TOOL], tool_choice=choice)).output
    assert output.tool_choice == mode
    assert output.parallel_tool_calls is parallel
    assert output.tool_choice_param == "tool_choice"
    (tool,) = output.tools
    assert (tool.name, tool.parameters) == ("get_weather", TOOL["input_schema"])
    assert (tool.name_param, tool.parameters_param) == ("tools.0.name", "tools.0.input_schema")


def test_sampling_stop_and_limits() -> None:
    spec = generation_spec(
        request(
            temperature=0.2,
            top_p=0.5,
            top_k=20,
            stop_sequences=["END", "###"],
            metadata={"user_id": "u"},
        )
    )
    assert (spec.sampling.temperature, spec.sampling.top_p, spec.sampling.top_k) == (0.2, 0.5, 20)
    assert spec.stop == ("END", "###")
    assert spec.max_tokens == 7


def test_count_spec_has_no_limits() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [TOOL]}
    spec = count_spec(CountTokensRequest.model_validate(body))
    assert spec.max_tokens is None and spec.stop == ()
    assert len(spec.output.tools) == 1


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "thinking"),
        ({"container": "c"}, "container"),
        ({"mcp_servers": [{"type": "url"}]}, "mcp_servers"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0.type"),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "messages.1",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                    }
                ]
            },
            "messages.0.content.0.type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
                    {"role": "user", "content": "b"},
                ]
            },
            "messages.1.content.0.type",
        ),
        (
            {
                "messages": [
                    {"role": "system", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
                    {"role": "user", "content": "b"},
                ]
            },
            "messages.0.content.0.type",
        ),
    ],
)
def test_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        generation_spec(request(**fields))
    assert caught.value.param == param


def test_accepted_harmless_fields() -> None:
    generation_spec(request(thinking={"type": "disabled"}, mcp_servers=[], service_tier="auto"))
