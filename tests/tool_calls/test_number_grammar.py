"""Numbers within their bounds in the llama.cpp grammar (tool_calls/number_grammar.py):
every text the rule allows is a value inside the bounds, and every whole number inside
them is allowed."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from picolm_server.tool_calls.number_grammar import bounded_number_rule, integer_range
from tests.conftest import requires_llama
from tests.support.server import RunningServer

_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\[[^\]]*\]|\{\d+(?:,\d+)?\}|[()|]|\s+')


def as_regex(gbnf: str) -> re.Pattern[str]:
    """The rule as a regular expression (the GBNF these rules use is a regex's subset)."""
    parts: list[str] = []
    for token in _TOKEN.findall(gbnf):
        if token.startswith('"'):
            parts.append(re.escape(json.loads(token)))
        elif not token.isspace():
            parts.append(token)
    assert "".join(_TOKEN.findall(gbnf)) == gbnf, "a token the test does not know"
    return re.compile("".join(parts))


def allows(schema: dict[str, Any], text: str) -> bool:
    rule = bounded_number_rule(schema)
    assert rule is not None
    return as_regex(rule).fullmatch(text) is not None


def test_a_score_between_0_and_1() -> None:
    score = {"type": "number", "minimum": 0, "maximum": 1}
    assert [allows(score, text) for text in ("0", "1", "0.5", "0.25", "1.0")] == [
        True, True, True, True, False,
    ]  # fmt: skip
    assert not any(allows(score, text) for text in ("10", "1.5", "-0.5", "2", "01", "1e0"))


def test_integers_are_held_to_exactly_their_bounds() -> None:
    stars = {"type": "integer", "minimum": 1, "maximum": 5}
    assert [text for text in map(str, range(-3, 12)) if allows(stars, text)] == list("12345")
    assert not allows(stars, "3.0")
    adult = {"type": "integer", "exclusiveMinimum": 17}
    assert allows(adult, "18") and allows(adult, "120") and not allows(adult, "17")
    assert not allows(adult, "-20")
    # Draft 4's boolean form.
    below = {"type": "integer", "maximum": 0, "exclusiveMaximum": True}
    assert allows(below, "-1") and not allows(below, "0") and not allows(below, "-0")


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "number"},
        {"type": "string", "minimum": 1},
        {"type": "integer", "minimum": 3, "maximum": 2},  # no value at all
        {"type": "integer", "enum": [1, 2], "minimum": 1},
        {"type": ["integer", "null"], "minimum": 1},
    ],
)
def test_no_rule_where_nothing_can_be_said(schema: dict[str, Any]) -> None:
    assert bounded_number_rule(schema) is None


bounds = st.one_of(
    st.none(), st.integers(-1200, 1200), st.floats(-1200, 1200).map(lambda x: round(x, 2))
)


@given(
    st.sampled_from(["integer", "number"]),
    bounds,
    bounds,
    st.booleans(),
    st.booleans(),
    st.lists(st.one_of(st.integers(-3000, 3000), st.floats(-3000, 3000)), max_size=20),
)
def test_every_value_the_rule_allows_is_inside_the_bounds(
    kind: str,
    low: float | None,
    high: float | None,
    low_exclusive: bool,
    high_exclusive: bool,
    values: list[float],
) -> None:
    schema: dict[str, Any] = {"type": kind}
    if low is not None:
        schema["exclusiveMinimum" if low_exclusive else "minimum"] = low
    if high is not None:
        schema["exclusiveMaximum" if high_exclusive else "maximum"] = high
    rule = bounded_number_rule(schema)
    if rule is None:
        return
    pattern = as_regex(rule)
    check = jsonschema.Draft202012Validator(schema)
    texts = {json.dumps(value) for value in values}
    texts |= {f"{value:.3f}" for value in values} | {str(int(value)) for value in values}
    for text in texts:
        if pattern.fullmatch(text):
            assert check.is_valid(json.loads(text)), (schema, text)
    # Every whole number inside the bounds is allowed (for a number as for an integer).
    for whole in range(-1300, 1300, 7):
        if check.is_valid(whole):
            assert pattern.fullmatch(str(whole)), (schema, whole)


def test_unbounded_sides_are_whole_numbers_of_at_most_15_digits() -> None:
    rule = integer_range(-5, None)
    assert rule is not None
    pattern = as_regex(rule)
    assert pattern.fullmatch("9" * 15) and not pattern.fullmatch("1" + "0" * 15)
    assert pattern.fullmatch("-5") and not pattern.fullmatch("-6")


REVIEW = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "delta": {"type": "number", "exclusiveMinimum": -2.5, "maximum": 1000000},
    },
    "required": ["score", "stars", "delta"],
}


@requires_llama
@pytest.mark.llama
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_llama_cpp_holds_replies_to_the_bounds(llama_server: RunningServer, seed: int) -> None:
    client = llama_server.client(max_retries=0)
    reply = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "Rate the movie Titanic. Score 10 of 10!"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "review", "schema": REVIEW},
        },
        temperature=1.0,
        seed=seed,
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), REVIEW)
    # The exact grammar was used: llama.cpp took it (no fallback to a JSON-object one).
    assert "falling back to a JSON-object grammar" not in llama_server.log()
