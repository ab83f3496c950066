"""Responses requests as the core takes them: refusals, input items, turns, tools, formats,
and the response object a request starts from."""

from __future__ import annotations

from typing import Any

import pytest

from picolm_server.api.responses.convert import (
    conversation_turns,
    generation_spec,
    initial_response,
    input_items,
    refuse_unsupported,
)
from picolm_server.api.responses.events import response_json
from picolm_server.api.responses.types import ResponsesRequest
from picolm_server.config.settings import GenerationDefaults
from picolm_server.errors import InvalidRequestError
from picolm_server.generation import Conversation, GenerationSpec, NamedTool
from tests.api.responses.shapes import check_response

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def parse(**fields: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", **fields})


def spec(**fields: Any) -> GenerationSpec:
    request = parse(**fields)
    items = input_items(request)
    params = (
        ["input"] if isinstance(request.input, str) else [f"input[{i}]" for i in range(len(items))]
    )
    return generation_spec(request, items, params)


def turns(**fields: Any) -> tuple[list[dict[str, Any]], list[str]]:
    request = parse(**fields)
    items = input_items(request)
    return conversation_turns(
        request.instructions, items, [f"input[{i}]" for i in range(len(items))]
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
        (
            {"include": ["reasoning.encrypted_content", "message.output_text.logprobs"]},
            "include[1]",
        ),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"truncation": "auto"}, "truncation"),
        ({"tools": [WEATHER, {"type": "web_search"}]}, "tools[1].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
        ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        refuse_unsupported(parse(input="hi", **fields))
    assert caught.value.param == param
    assert caught.value.status_code == 400


def test_harmless_parameters_are_accepted() -> None:
    refuse_unsupported(
        parse(
            input="hi",
            include=["reasoning.encrypted_content"],
            reasoning={"effort": "low"},
            text={"verbosity": "low"},
            metadata={"k": "v"},
            user="u",
            service_tier="auto",
            prompt_cache_key="k",
            truncation="disabled",
        )
    )


def test_input_items_and_their_turns() -> None:
    messages, params = turns(
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Checking."}],
            },
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"role": "developer", "content": [{"type": "input_text", "text": "Answer now."}]},
        ],
    )
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny", "name": "get_weather"},
        {"role": "system", "content": "Answer now."},
    ]
    assert params == ["instructions", "input[0]", "input[1]", "input[3]", "input[4]"]


def test_a_call_without_a_message_before_it_is_an_assistant_turn() -> None:
    messages, _ = turns(
        input=[
            {"role": "user", "content": "hi"},
            {"type": "function_call", "call_id": "c", "name": "get_weather", "arguments": "{}"},
            {
                "type": "function_call_output",
                "call_id": "c",
                "output": [{"type": "input_text", "text": "ok"}],
            },
        ],
    )
    assert messages[1]["role"] == "assistant" and messages[1]["content"] == ""
    assert messages[2]["content"] == "ok"


@pytest.mark.parametrize(
    ("item", "param"),
    [
        (
            {"role": "user", "content": [{"type": "input_image", "image_url": "x"}]},
            "input[0].content[0].type",
        ),
        ({"type": "item_reference", "id": "msg_1"}, "input[0].type"),
        ({"type": "reasoning", "summary": []}, "input[0].type"),
        ({"role": "tool", "content": "x"}, "input[0].role"),
        ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[0].call_id"),
        ({"type": "function_call_output", "call_id": "c"}, "input[0].output"),
    ],
)
def test_bad_items_are_named(item: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        input_items(parse(input=[item]))
    assert caught.value.param == param


def test_tool_choice_modes() -> None:
    named = spec(
        input="x", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}
    )
    assert named.output.tool_choice == NamedTool("get_weather")
    for mode in ("auto", "none", "required"):
        assert spec(input="x", tools=[WEATHER], tool_choice=mode).output.tool_choice == mode
    other = {**WEATHER, "name": "other"}
    allowed = spec(
        input="x",
        tools=[other, WEATHER],
        tool_choice={
            "type": "allowed_tools",
            "mode": "required",
            "tools": [{"type": "function", "name": "get_weather"}],
        },
    )
    assert allowed.output.tool_choice == "required"
    assert [tool.name for tool in allowed.output.tools] == ["get_weather"]
    # Errors about a tool name the request's own field.
    assert allowed.output.tools[0].parameters_param == "tools[1].parameters"
    with pytest.raises(InvalidRequestError) as caught:
        spec(input="x", tools=[WEATHER], tool_choice={"type": "web_search_preview"})
    assert caught.value.param == "tool_choice.type"


def test_text_formats_and_sampling() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    request = spec(
        input="x",
        text={"format": {"type": "json_schema", "name": "thing", "schema": schema}},
        temperature=0.5,
        top_p=0.5,
        max_output_tokens=7,
    )
    assert request.output.json_output is not None
    assert request.output.json_output.schema == schema
    assert request.output.json_output.param == "text.format.schema"
    assert (request.sampling.temperature, request.sampling.top_p) == (0.5, 0.5)
    assert request.max_tokens == 7
    json_object = spec(input="x", text={"format": {"type": "json_object"}}).output.json_output
    assert json_object is not None and json_object.schema is None
    with pytest.raises(InvalidRequestError) as caught:
        spec(input="x", text={"format": {"type": "json_schema", "schema": schema}})
    assert caught.value.param == "text.format.name"


def test_a_bad_function_name_is_named() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        refuse_unsupported(parse(input="x", tools=[{**WEATHER, "name": "bad name!"}]))
    assert caught.value.param == "tools[0].name"


def test_no_input_at_all_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        spec()
    assert caught.value.param == "input"


def test_a_nul_is_located() -> None:
    request = spec(input=[{"role": "user", "content": "ok"}, {"role": "user", "content": "a\0b"}])
    assert isinstance(request.prompt, Conversation)
    assert request.prompt.locate_nul is not None
    assert request.prompt.locate_nul() == "input[1]"


def test_the_initial_response_echoes_the_request() -> None:
    schema = {"type": "object"}
    request = parse(
        input="x",
        instructions="Be brief.",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        text={"format": {"type": "json_schema", "name": "n", "schema": schema}},
        max_output_tokens=9,
        temperature=0,
        store=False,
        metadata={"k": "v"},
    )
    response = initial_response(request, GenerationDefaults(), "m")
    parsed = check_response(response_json(response))
    assert parsed.status == "in_progress" and parsed.store is False
    assert parsed.temperature == 0 and parsed.top_p == GenerationDefaults().top_p
    assert parsed.tools[0].name == "get_weather" and parsed.tools[0].strict is True
    assert parsed.text is not None and parsed.text.format.type == "json_schema"
    assert response_json(response)["text"]["format"]["schema"] == schema
    assert parsed.max_output_tokens == 9 and parsed.metadata == {"k": "v"}
