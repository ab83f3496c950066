"""JSON replies in the generation core, over a scripted engine: a schema found in the
prompt becomes the reply's constraint (and is reported), a fenced JSON block is written
as one, and a json_object reply always ends valid."""

from __future__ import annotations

import json
from typing import Any

import pytest

from picolm_server.generation import (
    Conversation,
    Finish,
    GenerationSpec,
    JSONOutput,
    ModelCore,
    OutputRequest,
    TextDelta,
)
from picolm_server.observability.observation import RequestRecord
from tests.generation.test_core import events_of, run
from tests.support.scripted_engine import SCHEMA_ABILITIES, ScriptedEngine
from tests.support.scripted_shelf import scripted_core
from tests.tool_calls.test_prompt_schema import CITY, MD_JSON_REQUEST, USER, instructor_system

SYSTEM = {"role": "system", "content": instructor_system(CITY)}
GOOD = '{"name": "Paris", "population": 2100000}'


def spec(*messages: dict[str, Any], json_object: bool = True, **fields: Any) -> GenerationSpec:
    output = OutputRequest(json_output=JSONOutput() if json_object else None)
    return GenerationSpec(Conversation(tuple(messages)), output=output, **fields)


def core_with(engine: ScriptedEngine, setting: Any = "json_object") -> ModelCore:
    return scripted_core(engine, prompt_schema=setting)


def test_a_schema_in_the_prompt_holds_the_reply_on_a_grammar_engine() -> None:
    engine = ScriptedEngine(pieces=(GOOD,))
    record = RequestRecord("id", "POST", "/v1/chat/completions")
    reply = run(core_with(engine).complete(spec(SYSTEM, USER), record))
    assert reply.text == GOOD and reply.finish_reason == "stop"
    assert record.schema_source == "prompt"
    constraint = engine.requests[0].constraint
    assert constraint is not None and constraint.json_schema == CITY
    assert constraint.gbnf is not None and '\\"population\\"' in constraint.gbnf
    # The model is shown the outline the grammar holds it to, ahead of the client's text.
    assert "Reply with a JSON object of this form:" in engine.requests[0].prompt


def test_the_reply_is_checked_against_the_prompts_schema() -> None:
    from picolm_server.tool_calls import InvalidModelOutputError

    engine = ScriptedEngine(pieces=('{"name": "Paris"}',))
    with pytest.raises(InvalidModelOutputError, match="population"):
        run(core_with(engine).complete(spec(SYSTEM, USER)))


def test_on_the_json_writer_the_schema_is_the_writers() -> None:
    engine = ScriptedEngine(pieces=(GOOD,), abilities=SCHEMA_ABILITIES)
    run(core_with(engine).complete(spec(SYSTEM, USER)))
    request = engine.requests[0]
    assert request.constraint is not None and request.constraint.json_schema == CITY
    # The schema is in the prompt once: the client's; the server asks for the JSON only.
    assert request.prompt.count('"properties"') == 1
    assert "Reply with only a JSON object, with no other text." in request.prompt


@pytest.mark.parametrize(
    ("setting", "json_object", "messages"),
    [
        ("off", True, (SYSTEM, USER)),
        ("json_object", False, (SYSTEM, USER)),  # no JSON asked for: untouched
        ("json_object", False, (SYSTEM, USER, {"role": "user", "content": MD_JSON_REQUEST})),
        ("any", False, (SYSTEM, USER)),  # no fenced block asked for
    ],
)
def test_where_the_prompts_schema_is_not_taken(
    setting: str, json_object: bool, messages: tuple[dict[str, Any], ...]
) -> None:
    engine = ScriptedEngine(pieces=('{"x": 1}',))
    record = RequestRecord("id", "POST", "/v1/chat/completions")
    reply = run(
        core_with(engine, setting).complete(spec(*messages, json_object=json_object), record)
    )
    assert reply.text == '{"x": 1}' and record.schema_source is None
    constraint = engine.requests[0].constraint
    if json_object:
        assert constraint is not None and constraint.json_schema == {"type": "object"}
    else:
        assert constraint is None


def test_a_fenced_block_asked_for_is_written_as_one() -> None:
    engine = ScriptedEngine(pieces=('{"name": "Par', 'is", "population": 2100000}'))
    md_json = spec(SYSTEM, USER, {"role": "user", "content": MD_JSON_REQUEST}, json_object=False)
    core = core_with(engine, "any")
    events = run(events_of(core, md_json))
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    assert text == f"```json\n{GOOD}\n```"
    assert isinstance(events[-1], Finish) and events[-1].reason == "stop"
    assert run(core.complete(md_json)).text == text


@pytest.mark.parametrize("finish", ["stop", "length"])
def test_a_json_object_reply_that_repeats_a_key_ends_there(finish: Any) -> None:
    pieces = ('{ "red": { "red": 2,', ' "blue": 2, "green": 2, "bl', 'ue": 2, "blue": 2, "blue')
    engine = ScriptedEngine(pieces=pieces, finish=finish)
    core = core_with(engine)
    request = spec({"role": "user", "content": "Count the colours."})
    events = run(events_of(core, request))
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    assert text == '{ "red": { "red": 2, "blue": 2, "green": 2}}'
    assert isinstance(events[-1], Finish) and events[-1].reason == "stop"
    assert run(core.complete(request)).text == text


def test_a_json_object_reply_cut_off_by_max_tokens_is_closed() -> None:
    engine = ScriptedEngine(
        pieces=('{"cats": [{"name": "Tom", "age": 3}, {"name": "Fe',), finish="length"
    )
    reply = run(core_with(engine).complete(spec({"role": "user", "content": "Cats?"})))
    assert reply.finish_reason == "stop"
    assert json.loads(reply.text) == {"cats": [{"name": "Tom", "age": 3}, {"name": "Fe"}]}


def test_a_json_schema_reply_cut_off_is_still_returned_as_it_is() -> None:
    # Only json_object replies are closed: a cut-off schema reply could not match it.
    engine = ScriptedEngine(pieces=('{"name": "Par',), finish="length")
    output = OutputRequest(json_output=JSONOutput(CITY))
    request = GenerationSpec(Conversation((USER,)), output=output)
    reply = run(core_with(engine).complete(request))
    assert (reply.text, reply.finish_reason) == ('{"name": "Par', "length")
