"""Finding the one JSON Schema a prompt holds (tool_calls/prompt_schema.py), in the words
each client writes it in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from picolm_server.tool_calls.prompt_schema import (
    MAX_SCANNED_CHARS,
    PromptSchema,
    find_prompt_schema,
    is_object_schema,
)

CITY = {
    "properties": {
        "name": {"title": "Name", "type": "string"},
        "population": {"title": "Population", "type": "integer"},
    },
    "required": ["name", "population"],
    "title": "City",
    "type": "object",
}
# pydantic's form for a model that refers to itself: a reference into $defs at the top.
TREE = {
    "$defs": {
        "Node": {
            "properties": {
                "label": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
            },
            "required": ["label"],
            "type": "object",
        }
    },
    "$ref": "#/$defs/Node",
}
USER = {"role": "user", "content": "Paris has 2.1 million people."}


def instructor_system(schema: dict[str, Any]) -> str:
    # instructor/v2/providers/openai/handlers.py (OpenAIJSONHandler, OpenAIMDJSONHandler)
    return (
        "\nAs a genius expert, your task is to understand the content and provide\n"
        "the parsed objects in json that match the following json_schema:\n\n\n"
        f"{json.dumps(schema, indent=2, ensure_ascii=False)}\n\n"
        "Make sure to return an instance of the JSON, not the schema itself\n"
    )


def pydantic_ai_instructions(schema: dict[str, Any]) -> str:
    # pydantic_ai/profiles/__init__.py DEFAULT_PROMPTED_OUTPUT_TEMPLATE, _output.py
    return (
        "\nAlways respond with a JSON object that's compatible with this schema:\n\n"
        f"{json.dumps(schema)}\n\nDon't include any text or Markdown fencing before or after.\n"
    )


def ai_sdk_system(schema: dict[str, Any]) -> str:
    # ai 4.x, core/generate-object/inject-json-instruction.ts
    return (
        f"JSON schema:\n{json.dumps(schema, separators=(',', ':'))}\n"
        "You MUST answer with a JSON object that matches the JSON schema above."
    )


def litellm_user(schema: dict[str, Any]) -> str:
    # litellm_core_utils/prompt_templates/factory.py default_response_schema_prompt
    return f"Use this JSON schema: \n    ```json\n    {json.dumps(schema)}\n    ```"


MD_JSON_REQUEST = "Return the correct JSON response within a ```json codeblock. not the JSON_SCHEMA"


def find(messages: list[dict[str, Any]], *, json_mode: bool = True, setting: Any = "json_object"):
    return find_prompt_schema(messages, asked_for_json=json_mode, setting=setting)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": instructor_system(CITY)}, USER],
        [{"role": "system", "content": "Be brief.\n\n" + instructor_system(CITY)}, USER],
        [{"role": "system", "content": pydantic_ai_instructions(CITY)}, USER],
        [{"role": "system", "content": ai_sdk_system(CITY)}, USER],
        [USER, {"role": "user", "content": litellm_user(CITY)}],
    ],
    ids=["instructor", "instructor-after-system-text", "pydantic-ai", "ai-sdk", "litellm"],
)
def test_each_clients_form_is_found(messages: list[dict[str, Any]]) -> None:
    assert find(messages) == PromptSchema(CITY)


def test_a_defs_wrapper_is_a_schema() -> None:
    assert is_object_schema(TREE)
    messages = [{"role": "system", "content": instructor_system(TREE)}, USER]
    assert find(messages) == PromptSchema(TREE)


@pytest.mark.parametrize(
    "value",
    [
        {"type": "object"},  # no properties: says nothing a json_object does not
        {"properties": {"a": {}}},  # no type
        {"type": "array", "items": {}},
        {"$defs": {"A": {}}},  # no reference into them
        {"$ref": "#/$defs/A"},
        ["type", "object"],
        {"name": "Paris", "population": 2100000},  # an instance, not a schema
    ],
)
def test_what_is_not_a_schema(value: Any) -> None:
    assert not is_object_schema(value)
    messages = [{"role": "system", "content": f"Answer like {json.dumps(value)}"}, USER]
    assert find(messages) is None


def test_several_different_schemas_or_none_change_nothing() -> None:
    other = {"type": "object", "properties": {"city": {"type": "string"}}}
    two = [
        {"role": "system", "content": instructor_system(CITY)},
        {"role": "user", "content": "Or this one: " + json.dumps(other)},
    ]
    assert find(two) is None
    assert find([USER]) is None
    # The same schema twice is one schema (a client that repeats it in a later turn).
    again = [*two[:1], {"role": "user", "content": json.dumps(CITY)}]
    assert find(again) == PromptSchema(CITY)


def test_assistant_and_tool_turns_are_not_read() -> None:
    # A retry carries the model's earlier reply, which may be the schema echoed back.
    echoed = {**CITY, "properties": {"name": {"type": "string"}}}
    messages = [
        {"role": "system", "content": instructor_system(CITY)},
        USER,
        {"role": "assistant", "content": json.dumps(echoed)},
        {"role": "tool", "content": json.dumps(echoed), "tool_call_id": "1"},
        {"role": "user", "content": "Recall the function correctly, fix the errors"},
    ]
    assert find(messages) == PromptSchema(CITY)


def test_a_schema_the_server_would_refuse_is_not_taken() -> None:
    remote = {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}
    assert find([{"role": "system", "content": json.dumps(remote)}]) is None


def test_where_it_applies() -> None:
    with_schema = [{"role": "system", "content": instructor_system(CITY)}, USER]
    md_json = [*with_schema, {"role": "user", "content": MD_JSON_REQUEST}]
    # Without a request for JSON: only with "any", and only when a fenced block is asked for.
    assert find(with_schema, json_mode=False) is None
    assert find(with_schema, json_mode=False, setting="any") is None
    assert find(md_json, json_mode=False) is None
    assert find(md_json, json_mode=False, setting="any") == PromptSchema(CITY, fenced=True)
    # LiteLLM fences the schema it shows: that is not a request for a fenced reply.
    litellm = [USER, {"role": "user", "content": litellm_user(CITY)}]
    assert find(litellm, json_mode=False, setting="any") is None
    # "off" turns it off everywhere.
    assert find(with_schema, setting="off") is None
    assert find(md_json, json_mode=False, setting="off") is None
    # Asked for JSON, the reply is the JSON itself, fenced request or not.
    assert find(md_json, setting="any") == PromptSchema(CITY)


def test_a_prompt_full_of_braces_is_read_within_bounds() -> None:
    # Fragments that are not JSON cost little each: the schema after them is found.
    fragments = '{"a" ' * 5000
    assert find([{"role": "system", "content": fragments + json.dumps(CITY)}]) is not None
    # Objects that never close make every try read to the end: the reading stops at its
    # bound (and nesting too deep for the decoder is no error either).
    unclosed = '{"a": [' * 20_000 + json.dumps(CITY)
    assert find([{"role": "system", "content": unclosed}]) is None
    deep = "[" * 100_000 + json.dumps(CITY)
    assert find([{"role": "system", "content": deep}]) == PromptSchema(CITY)
    # Text past the characters looked at is not read.
    far = " " * MAX_SCANNED_CHARS + json.dumps(CITY)
    assert find([{"role": "system", "content": far}]) is None
