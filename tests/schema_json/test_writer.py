"""The JSON writer against scripted models: one that means to write a given text, and
one that writes random characters (every reply must still validate)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import jsonschema
import pytest

from picolm_server.schema_json import JSONWriter, Limits
from picolm_server.tool_calls.reply_schema import call_schema

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city"],
}
EMAIL = {
    "type": "object",
    "properties": {
        "to": {"type": "string"},
        "subject": {"type": "string", "maxLength": 20},
        "urgent": {"type": "boolean"},
    },
    "required": ["to", "subject"],
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "weather": WEATHER,
    "nested": {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 2, "maxLength": 12},
                    "age": {"type": "integer", "exclusiveMinimum": 0, "maximum": 130},
                    "address": {
                        "type": "object",
                        "properties": {"street": {"type": "string"}, "zip": {"type": "string"}},
                        "required": ["zip"],
                    },
                },
                "required": ["name", "age", "address"],
            },
            "score": {"type": "number", "minimum": -1.5, "maximum": 2.5},
        },
        "required": ["person", "score"],
        "additionalProperties": False,
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4},
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
            "flags": {"type": "array", "items": {"type": "boolean"}},
        },
        "required": ["tags", "matrix"],
    },
    "enums_and_anyof": {
        "type": "object",
        "properties": {
            "mode": {"enum": ["fast", "slow", 3, None, True]},
            "target": {
                "anyOf": [
                    {"type": "string", "maxLength": 10},
                    {"type": "integer"},
                    {
                        "type": "object",
                        "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                        "required": ["x", "y"],
                    },
                    {"type": "null"},
                ]
            },
            "kind": {"const": "point"},
            "maybe": {"type": ["string", "null"]},
        },
        "required": ["mode", "target", "kind"],
    },
    "refs": {
        "$defs": {"item": {"type": "object", "properties": {"id": {"type": "integer"}},
                           "required": ["id"]}},
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
                       "extra": {"allOf": [{"$ref": "#/$defs/item"},
                                           {"properties": {"note": {"type": "string"}}}]}},
        "required": ["items", "extra"],
    },
    "any_object": {"type": "object"},
    "tool_call": {"anyOf": [call_schema("get_weather", WEATHER), call_schema("send_email", EMAIL)]},
}  # fmt: skip


class _Run:
    def __init__(self, text: str, max_tokens: int) -> None:
        self.text = text[:max_tokens]
        self.cut = len(text) > max_tokens
        self.stopped = False

    async def next_char(self) -> str | None:
        if not self.text:
            return None
        char, self.text = self.text[0], self.text[1:]
        return char

    @property
    def stopped_by_model(self) -> bool:
        return not self.cut

    async def stop(self) -> None:
        self.stopped = True


class MeaningModel:
    """Means to write ``target``: a run continues it from where the reply so far ends
    (the longest overlap), or starts it over when the reply does not end with any of it."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.starts: list[str] = []

    async def start(self, text: str, max_tokens: int) -> _Run:
        self.starts.append(text)
        for length in range(len(self.target), 0, -1):
            if text.endswith(self.target[:length]):
                return _Run(self.target[length:], max_tokens)
        return _Run(self.target, max_tokens)


class RandomModel:
    """Writes random characters, JSON's own among them."""

    ALPHABET = '{}[]",: abcxyz0123456789-.eE+truefalsn\\\n'

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.starts = 0

    async def start(self, text: str, max_tokens: int) -> _Run:
        self.starts += 1
        length = self.random.randrange(0, 12)
        chars = "".join(self.random.choice(self.ALPHABET) for _ in range(length))
        return _Run(chars, max_tokens)


def write(schema: dict[str, Any], model: Any, max_tokens: int = 200, run_tokens: int = 1000) -> str:
    limits = Limits(max_tokens=max_tokens, string_cap=40, array_cap=5, first_run_tokens=run_tokens)
    writer = JSONWriter(schema, model.start, limits, lambda text: len(text) // 3)
    return asyncio.run(writer.write())


def test_a_model_that_writes_the_reply_right_needs_one_run() -> None:
    target = '{"city": "Paris", "unit": "fahrenheit", "days": 3}'
    model = MeaningModel(target)
    assert write(WEATHER, model) == target
    # The server wrote '{"city": "' itself; the model went on from there in one run.
    assert model.starts == ['{"city": "']


def test_whitespace_between_tokens_is_the_models() -> None:
    target = '{"name":"get_weather",\n"arguments": {"city":"Oslo",\n"days":  7}}'
    assert write(SCHEMAS["tool_call"], MeaningModel(target)) == target


def test_a_diverging_model_gets_the_fixed_parts_written_for_it() -> None:
    # A key the schema does not have: the server writes the next key and restarts the model.
    model = MeaningModel('{"city": "Rome", "country": "IT", "days": 2}')
    text = write(WEATHER, model)
    assert text.startswith('{"city": "Rome", "unit": "')
    jsonschema.validate(json.loads(text), WEATHER)
    assert len(model.starts) == 3  # the enum, then whether "days" follows


def test_optional_properties_may_be_left_out_but_keep_the_schema_order() -> None:
    model = MeaningModel('{"city": "Rome", "days": 2, "unit": "celsius"}')
    assert write(WEATHER, model) == '{"city": "Rome", "days": 2}'
    assert len(model.starts) == 1


@pytest.mark.parametrize(
    ("written", "chosen"),
    [('"fah', "fahrenheit"), ('"c', "celsius"), ('"kelvin"', "celsius"), ("", "celsius")],
)
def test_a_choice_takes_the_option_the_characters_match_else_the_first(
    written: str, chosen: str
) -> None:
    schema = {"type": "string", "enum": ["celsius", "fahrenheit"]}
    assert json.loads(write(schema, MeaningModel(written))) == chosen


def test_numbers_end_at_the_first_character_that_cannot_continue_them() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "number"}, "i": {"type": "integer"}},
              "required": ["n", "i"]}  # fmt: skip
    assert write(schema, MeaningModel('{"n": -12.5e3, "i": 40}')) == '{"n": -12.5e3, "i": 40}'
    assert write(schema, MeaningModel('{"n": 7, "i": 4.5}')) == '{"n": 7, "i": 4}'
    assert json.loads(write(schema, MeaningModel('{"n": 1., "i": 2}')))["n"] == 1


def test_numbers_are_moved_into_their_bounds() -> None:
    value = json.loads(write(WEATHER, MeaningModel('{"city": "x", "days": 99}')))
    assert value["days"] == 14


def test_strings_stop_at_max_length() -> None:
    text = write(EMAIL, MeaningModel('{"to": "a", "subject": "' + "s" * 50 + '"}'))
    assert json.loads(text)["subject"] == "s" * 20


def test_a_tool_call_union_is_chosen_by_the_name() -> None:
    target = '{"name": "send_email", "arguments": {"to": "a@b.c", "subject": "hi"}}'
    model = MeaningModel(target)
    assert write(SCHEMAS["tool_call"], model) == target
    assert model.starts == [""]


def test_a_run_that_ends_on_its_budget_is_continued() -> None:
    target = '{"city": "A very long city name", "unit": "celsius"}'
    model = MeaningModel(target)
    assert write(WEATHER, model, run_tokens=5) == target
    # The first run is asked for 5 tokens, the next one for the rest of the budget.
    assert model.starts == ['{"city": "', '{"city": "A ver']


@pytest.mark.parametrize("max_tokens", [0, 3, 12])
def test_a_spent_budget_still_ends_in_a_valid_reply(max_tokens: int) -> None:
    for name, schema in SCHEMAS.items():
        value = json.loads(write(schema, RandomModel(1), max_tokens=max_tokens))
        jsonschema.validate(value, schema), name


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_reply_of_a_random_model_validates(name: str) -> None:
    schema = SCHEMAS[name]
    for seed in range(100):
        text = write(schema, RandomModel(seed))
        try:
            jsonschema.validate(json.loads(text), schema)
        except (ValueError, jsonschema.ValidationError) as exc:  # pragma: no cover
            raise AssertionError(f"seed {seed}: {text!r}: {exc}") from None
