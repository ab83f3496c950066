"""Schema outlines (what the model is shown of a schema a grammar enforces) and the
prompt sections that use them."""

from __future__ import annotations

from typing import Any

import pytest

from picolm_server.api.chat.types import ChatCompletionRequest
from picolm_server.tool_calls import OutputPlan, prompt_messages
from picolm_server.tool_calls.schema_outline import schema_outline
from tests.tool_calls.test_tool_calls import plan_of

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
BOOKING = {
    "type": "object",
    "properties": {
        "restaurant": {"type": "string", "description": "name of the restaurant"},
        "people": {"type": "integer", "description": "number of guests", "minimum": 1},
        "time": {"type": "string", "description": "time of the\n booking, e.g. 19:30"},
    },
    "required": ["restaurant", "people", "time"],
}


def test_an_outline_is_the_shape_of_the_reply() -> None:
    assert schema_outline(PERSON) == '{"name": string, "age": integer, "city": string}'


def test_descriptions_follow_the_shape_one_line_per_key() -> None:
    assert schema_outline(BOOKING) == (
        '{"restaurant": string, "people": integer (minimum: 1), "time": string}\n'
        "- restaurant: name of the restaurant\n"
        "- people: number of guests\n"
        "- time: time of the booking, e.g. 19:30"
    )


def test_every_value_constraint_is_written() -> None:
    schema = {
        "type": "object",
        "title": "Order",  # a label, left out
        "description": "An order",
        "properties": {
            "unit": {"enum": ["kg", "lb"]},
            "kind": {"const": "order"},
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 5},
                "maxItems": 3,
            },
            "note": {"type": ["string", "null"]},
            "lines": {
                "type": "array",
                "items": {"type": "object", "properties": {"sku": {"description": "item"}}},
            },
            "extra": {"type": "object"},
        },
        "required": ["unit", "kind"],
    }
    assert schema_outline(schema) == (
        '{"unit": "kg" | "lb", "kind": "order", '
        '"tags": [string (maxLength: 5), ...] (optional; maxItems: 3), '
        '"note": string | null (optional), '
        '"lines": [{"sku": any (optional)}, ...] (optional), "extra": object (optional)}\n'
        "An order\n"
        "- lines[].sku: item"
    )


@pytest.mark.parametrize(
    "schema",
    [
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {}}},
        {"type": "object", "properties": {"a": {}}, "additionalProperties": True},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "object", "properties": {"a": {}}, "required": ["b"]},
        {"type": "string", "properties": {"a": {}}},
        {"type": "object", "properties": {"a": {"type": "string", "x-unit": "cm"}}},
        {"type": "array", "items": [{"type": "string"}]},
        {"type": "decimal"},
    ],
)
def test_a_schema_an_outline_cannot_say_in_full_has_none(schema: dict[str, Any]) -> None:
    assert schema_outline(schema) is None


def plan(grammar: bool, **fields: Any) -> OutputPlan:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    request = ChatCompletionRequest.model_validate(body)
    made = plan_of(request, hermes_template=True, grammar_engine=grammar)
    assert made is not None
    return made


def system_text(made: OutputPlan) -> str:
    messages, _ = prompt_messages(
        [{"role": "user", "content": "hi"}],
        made,
        template_renders_tools=False,
        call_format=made.call_format,
    )
    assert messages[0]["role"] == "system"
    return str(messages[0]["content"])


def person_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "p", "strict": True, "schema": schema}}


def test_a_grammar_engine_shows_the_response_schema_as_an_outline() -> None:
    text = system_text(plan(True, response_format=person_format(PERSON)))
    assert text == (
        'Reply with a JSON object of this form:\n{"name": string, "age": integer, "city": string}'
    )


def test_without_a_grammar_or_an_outline_the_schema_itself_is_shown() -> None:
    # PicoLM only keeps JSON balanced: the exact schema is all the model has to go by.
    text = system_text(plan(False, response_format=person_format(PERSON)))
    assert 'that matches this JSON schema:\n{"type": "object", "properties": {' in text
    loose = {"type": "object", "properties": {"a": {}}, "additionalProperties": True}
    text = system_text(plan(True, response_format=person_format(loose)))
    assert text.endswith('"additionalProperties": true}')


def booking_tool(parameters: dict[str, Any]) -> dict[str, Any]:
    function = {"name": "book", "description": "Book a table.", "parameters": parameters}
    return {"type": "function", "function": function}


NAMED = {"type": "function", "function": {"name": "book"}}


def test_a_forced_call_is_shown_as_the_one_call_to_write() -> None:
    text = system_text(plan(True, tools=[booking_tool(BOOKING)], tool_choice=NAMED))
    assert text == (
        "# Tool\n\nCall the function `book` now. It does this: Book a table.\n"
        "Write the call like this:\n<tool_call>\n"
        '{"name": "book", "arguments": {"restaurant": string, "people": integer (minimum: 1), '
        '"time": string}}\n</tool_call>\n'
        "- restaurant: name of the restaurant\n"
        "- people: number of guests\n"
        "- time: time of the booking, e.g. 19:30"
    )


def test_a_forced_call_whose_schema_has_no_outline_shows_the_schema() -> None:
    parameters = {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}}
    text = system_text(plan(True, tools=[booking_tool(parameters)], tool_choice=NAMED))
    assert '{"name": "book", "arguments": <args-json-object>}' in text
    schema_text = '{"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}}'
    assert text.endswith("The arguments must match this JSON schema:\n" + schema_text)
