"""The rules that end a json_object reply (tool_calls/json_close.py): a repeated key ends
it, a cut-off reply is closed, and what is streamed is always a prefix of the end."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from picolm_server.tool_calls.json_close import JSONCloser


def close(text: str, pieces: int = 1) -> tuple[str, str, JSONCloser]:
    """Feed ``text`` in ``pieces``-character pieces; the streamed text and the closed one."""
    closer = JSONCloser()
    streamed = "".join(
        closer.feed(text[start : start + pieces]) for start in range(0, len(text), pieces)
    )
    return streamed, closer.closed(), closer


def test_a_repeated_key_ends_the_reply_before_it() -> None:
    text = '{ "red": { "red": 2, "blue": 2, "green": 2, "blue": 2, "blue": 2'
    streamed, closed, closer = close(text)
    assert closer.repeated and closer.done
    assert closed == '{ "red": { "red": 2, "blue": 2, "green": 2}}'
    assert closed.startswith(streamed)
    # The same key in another object is no repetition.
    _, closed, closer = close('{"a": {"a": 1}, "b": {"a": 2}}')
    assert not closer.repeated and closer.ended and closed == '{"a": {"a": 1}, "b": {"a": 2}}'


@pytest.mark.parametrize(
    ("cut", "closed"),
    [
        ('{"a": "hel', '{"a": "hel"}'),
        ('{"a": "x\\u00', '{"a": "x"}'),  # an escape is sent whole or not at all
        ('{"a": "x\\', '{"a": "x"}'),
        ('{"a": [1, 2, ', '{"a": [1, 2]}'),
        ('{"a": tr', '{"a": true}'),
        ('{"a": nu', '{"a": null}'),
        ('{"a": -', '{"a": -0}'),
        ('{"a": 1.', '{"a": 1.0}'),
        ('{"a": {"b": 1e', '{"a": {"b": 1e0}}'),
        ('{"ab', "{}"),
        ('{"a": 1, "b', '{"a": 1}'),
        ('{"a"', '{"a": null}'),
        ('{"a":', '{"a":null}'),
        ('{"a": 1,  ', '{"a": 1}'),
        ("{ ", "{}"),
        ('{"a": [', '{"a": []}'),
        ('{"a": [{"b": [tr', '{"a": [{"b": [true]}]}'),
    ],
)
def test_a_cut_off_reply_is_completed_and_closed(cut: str, closed: str) -> None:
    streamed, result, closer = close(cut)
    assert result == closed
    assert result.startswith(streamed)
    assert isinstance(json.loads(result), dict)
    assert not closer.done


def test_the_end_of_the_object_ends_it_and_nothing_after_is_sent() -> None:
    streamed, closed, closer = close('{"a": [1, {"b": "}"}]} and more')
    assert closer.ended
    assert streamed == closed == '{"a": [1, {"b": "}"}]}'


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(st.text(max_size=5), json_values, max_size=5),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=1, max_value=7),
    st.booleans(),
)
def test_every_prefix_of_every_object_closes_to_valid_json(
    value: dict[str, Any], cut: int, pieces: int, pretty: bool
) -> None:
    text = json.dumps(value, indent=1 if pretty else None, ensure_ascii=cut % 2 == 0)
    prefix = text[: cut % (len(text) + 1)]
    streamed, closed, _ = close(prefix, pieces)
    assert closed.startswith(streamed)
    assert isinstance(json.loads(closed), dict)
    if prefix == text:
        assert closed == text
