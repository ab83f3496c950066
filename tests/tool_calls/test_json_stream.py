"""JSON replies stream in pieces that join to exactly the non-streamed reply."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from picolm_server.tool_calls import (
    ContentPiece,
    InvalidModelOutputError,
    OutputPlan,
    ReplyDecoder,
)
from picolm_server.tool_calls.json_stream import JSONPieces
from picolm_server.tool_calls.plan import ToolSpec
from tests.tool_calls.test_tool_calls import client_reply

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def json_plan(**fields: object) -> OutputPlan:
    return OutputPlan("json", call_format="json", response_schema=SCHEMA, **fields)  # type: ignore[arg-type]


def streamed(plan: OutputPlan, pieces: list[str], finish: str = "stop") -> list[str]:
    decoder = ReplyDecoder(plan)
    sent: list[str] = []
    for piece in pieces:
        sent += [event.text for event in decoder.feed(piece) if isinstance(event, ContentPiece)]
    sent += [event.text for event in decoder.finish(finish) if isinstance(event, ContentPiece)]
    return sent


def test_pieces_are_released_as_they_come() -> None:
    text = '\n {"name": "a b", "x": [1, {"y": "}"}]}  \n'
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    sent = streamed(json_plan(), pieces)
    assert len(sent) > 5
    assert "".join(sent) == text.strip() == client_reply(json_plan(), pieces, "stop").content


def test_text_after_the_value_is_never_sent_and_fails_the_reply() -> None:
    decoder = ReplyDecoder(json_plan())
    sent = [e.text for e in decoder.feed('{"name": "a"} and more') if isinstance(e, ContentPiece)]
    assert "".join(sent) == '{"name": "a"}'
    with pytest.raises(InvalidModelOutputError):
        decoder.finish("stop")


def test_a_reply_that_misses_the_schema_fails_at_the_end() -> None:
    decoder = ReplyDecoder(json_plan())
    assert decoder.feed('{"nom": "a"}')
    with pytest.raises(InvalidModelOutputError) as caught:
        decoder.finish("stop")
    assert "schema" in caught.value.message


def test_a_reply_cut_by_max_tokens_is_sent_as_it_is() -> None:
    assert "".join(streamed(json_plan(), ['{"name": "ab', "c  "], "length")) == '{"name": "abc'


def test_auto_with_a_json_format_streams_once_it_is_not_a_call() -> None:
    tool = ToolSpec("f", None, {"type": "object"})
    plan = OutputPlan("auto", call_format="hermes", tools=(tool,), prompt_tools=(tool,),
                      response_schema=SCHEMA)  # fmt: skip
    sent = streamed(plan, ['{"na', 'me": ', '"z"}'])
    assert len(sent) == 3 and json.loads("".join(sent)) == {"name": "z"}


@given(st.text(alphabet=' \n{}[]"\\ab:,', max_size=40), st.lists(st.integers(1, 5), max_size=12))
def test_released_text_is_always_a_prefix_of_the_stripped_reply(text: str, cuts: list[int]) -> None:
    pieces, position = [], 0
    for cut in cuts:
        pieces.append(text[position : position + cut])
        position += cut
    pieces.append(text[position:])
    splitter = JSONPieces()
    released = "".join(splitter.feed(piece) for piece in pieces)
    assert text.strip().startswith(released)
    assert released + splitter.rest == text.lstrip(" \n")
