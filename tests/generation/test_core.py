"""The generation core with a scripted in-process engine: events, replies, stop
strings, tool calls, errors and the slot, tokenize and embeddings, without HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from picolm_server.config.settings import GenerationDefaults
from picolm_server.errors import (
    APIError,
    EmbeddingsUnsupportedError,
    EngineCannotError,
    EngineError,
    InvalidRequestError,
    ModelNotFoundError,
)
from picolm_server.generation import (
    Conversation,
    Finish,
    FunctionTool,
    GenerationEvent,
    GenerationSpec,
    JSONOutput,
    ModelCore,
    NamedTool,
    OutputRequest,
    RawPrompt,
    Sampling,
    TextDelta,
    ToolCallArguments,
    ToolCallDone,
    ToolCallStart,
)
from picolm_server.prompting.chat_template import ChatTemplate, builtin_template_source
from tests.support.scripted_engine import SCHEMA_ABILITIES, ScriptedEngine
from tests.support.scripted_shelf import scripted_core

WEATHER = FunctionTool(
    name="get_weather",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]},
    name_param="tools[0].name",
    parameters_param="tools[0].input_schema",
)  # fmt: skip


def core_for(engine: ScriptedEngine, template: str = "chatml") -> ModelCore:
    source = builtin_template_source(template)
    return scripted_core(
        engine,
        template=ChatTemplate(template, source, eos_token="<|im_end|>"),
        defaults=GenerationDefaults(max_tokens=50, temperature=0.3, top_p=0.8),
    )


def conversation(text: str = "hi", **fields: Any) -> GenerationSpec:
    return GenerationSpec(Conversation(({"role": "user", "content": text},)), **fields)


async def events_of(core: ModelCore, spec: GenerationSpec) -> list[GenerationEvent]:
    async with await core.open(spec) as stream:
        return [event async for event in stream]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_text_streams_as_deltas_then_finish_with_usage() -> None:
    engine = ScriptedEngine(pieces=(" Hello", " world"), prompt_tokens=7, cached_tokens=3)
    core = core_for(engine)
    events = run(events_of(core, conversation()))
    # The leading space of a reply is not text (SentencePiece word start).
    assert events[:2] == [TextDelta("Hello"), TextDelta(" world")]
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.reason == "stop"
    assert (finish.usage.prompt_tokens, finish.usage.cached_tokens) == (7, 3)
    assert finish.usage.completion_tokens == 2 and finish.usage.total_tokens == 9
    assert engine.closed == 1 and core.core.models.running == 0
    request = engine.requests[0]
    assert "<|im_start|>user\nhi<|im_end|>" in request.prompt
    assert (request.max_tokens, request.temperature, request.top_p) == (50, 0.3, 0.8)


def test_a_client_stop_string_ends_the_reply_and_is_reported() -> None:
    engine = ScriptedEngine(
        pieces=(
            "one two ST",
            "OP three",
        )
    )
    reply = run(core_for(engine).complete(conversation(stop=("STOP",))))
    assert reply.text == "one two " and reply.stop_sequence == "STOP"
    assert reply.finish_reason == "stop"
    # A template end marker also stops the reply, but is not the client's stop string.
    marker = run(core_for(ScriptedEngine(pieces=("a<|im_end|>b",))).complete(conversation()))
    assert (marker.text, marker.stop_sequence) == ("a", None)


def test_sampling_overrides_and_top_k() -> None:
    engine = ScriptedEngine()
    spec = conversation(sampling=Sampling(temperature=0, top_p=0.5, top_k=20, seed=11),
                        max_tokens=9)  # fmt: skip
    run(core_for(engine).complete(spec))
    request = engine.requests[0]
    assert (request.temperature, request.top_p, request.top_k, request.seed) == (0, 0.5, 20, 11)
    assert request.max_tokens == 9
    # An engine without a top-k cut refuses it, naming the field the adapter gave.
    pico = core_for(ScriptedEngine(abilities=SCHEMA_ABILITIES))
    spec = conversation(sampling=Sampling(top_k=5, top_k_param="top_k"))
    with pytest.raises(EngineCannotError) as caught:
        run(pico.complete(spec))
    assert (caught.value.status_code, caught.value.param) == (400, "top_k")


def test_a_tool_call_is_started_streamed_in_pieces_and_done() -> None:
    arguments = {"city": "Paris" * 10}
    text = "<tool_call>\n" + json.dumps({"name": "get_weather", "arguments": arguments})
    engine = ScriptedEngine(pieces=(text[:20], text[20:], "\n</tool_call>"))
    spec = conversation(output=OutputRequest(tools=(WEATHER,), tool_choice="auto"))
    events = run(events_of(core_for(engine), spec))
    start, *pieces, done, finish = events
    assert isinstance(start, ToolCallStart) and start.name == "get_weather"
    assert all(isinstance(piece, ToolCallArguments) and piece.index == 0 for piece in pieces)
    assert len(pieces) > 1
    joined = "".join(piece.fragment for piece in pieces if isinstance(piece, ToolCallArguments))
    assert isinstance(done, ToolCallDone) and done.arguments == joined
    assert json.loads(joined) == arguments and done.id == start.id
    assert isinstance(finish, Finish) and finish.reason == "tool_calls"
    # The tools were put into the prompt, and a grammar holds the reply to them.
    request = engine.requests[0]
    assert "get_weather" in request.prompt and request.constraint is not None
    assert request.constraint.gbnf is not None


def test_complete_gathers_the_calls() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    spec = conversation(
        output=OutputRequest(tools=(WEATHER,), tool_choice=NamedTool("get_weather"))
    )
    reply = run(core_for(ScriptedEngine(pieces=(text,))).complete(spec))
    assert reply.text == "" and reply.finish_reason == "tool_calls"
    (call,) = reply.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})


def test_plan_errors_name_the_adapters_fields() -> None:
    bad = FunctionTool("f", None, {"type": "array"}, "tools[0].name", "tools[0].input_schema")
    spec = conversation(output=OutputRequest(tools=(bad,)))
    with pytest.raises(InvalidRequestError) as caught:
        run(core_for(ScriptedEngine()).complete(spec))
    assert caught.value.param == "tools[0].input_schema"
    spec = conversation(output=OutputRequest(tools=(WEATHER,), tool_choice=NamedTool("nope")))
    with pytest.raises(InvalidRequestError) as caught:
        run(core_for(ScriptedEngine()).complete(spec))
    assert caught.value.param == "tool_choice"


def test_a_json_reply_is_checked_against_its_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    spec = conversation(output=OutputRequest(json_output=JSONOutput(schema, "text.format")))
    reply = run(core_for(ScriptedEngine(pieces=('{"n":', " 4}"))).complete(spec))
    assert json.loads(reply.text) == {"n": 4}
    with pytest.raises(APIError) as caught:
        run(core_for(ScriptedEngine(pieces=('{"m": 1}',))).complete(spec))
    assert caught.value.status_code == 500 and caught.value.code == "invalid_model_output"


def test_an_engine_failure_mid_stream_is_raised_and_frees_everything() -> None:
    engine = ScriptedEngine(pieces=("a", "b", "c"), fail_after=2)
    core = core_for(engine)

    async def consume() -> list[GenerationEvent]:
        seen: list[GenerationEvent] = []
        stream = await core.open(conversation())
        async with stream:
            with pytest.raises(EngineError):
                async for event in stream:
                    seen.append(event)
        return seen

    assert run(consume()) == [TextDelta("a"), TextDelta("b")]
    assert engine.closed == 1 and core.core.models.running == 0


def test_a_stream_closed_early_stops_the_engine() -> None:
    engine = ScriptedEngine(pieces=("a",) * 100)
    core = core_for(engine)

    async def take_one() -> None:
        stream = await core.open(conversation())
        async for _ in stream:
            break
        await stream.aclose()

    run(take_one())
    assert engine.closed == 1 and core.core.models.running == 0


def test_a_raw_prompt_is_sent_as_it_is_with_only_the_clients_stops() -> None:
    engine = ScriptedEngine(pieces=(" x<|im_end|>y",))
    reply = run(core_for(engine).complete(GenerationSpec(RawPrompt("Once upon"))))
    assert engine.requests[0].prompt == "Once upon"
    # The model's text exactly: its leading space too.
    assert reply.text == " x<|im_end|>y"
    split = engine.requests[0].split_prompt
    assert split is not None and all(piece.from_request for piece in split.pieces)


def test_a_nul_is_refused_where_the_engine_cannot_take_it() -> None:
    spec = GenerationSpec(Conversation(({"role": "user", "content": "a\0b"},),
                                       locate_nul=lambda: "messages[0].content"))  # fmt: skip
    with pytest.raises(InvalidRequestError) as caught:
        run(core_for(ScriptedEngine(abilities=SCHEMA_ABILITIES)).complete(spec))
    assert caught.value.param == "messages[0].content"
    run(core_for(ScriptedEngine()).complete(spec))  # llama.cpp-like: a character like any


def test_a_model_is_found_by_name_and_no_name_is_the_default() -> None:
    core = core_for(ScriptedEngine()).core
    assert core.accept("scripted").model_id == "scripted"
    assert core.accept("").model_id == "scripted"
    for name in ("gpt-4o", "../../etc/passwd", "/nonexistent/scripted.gguf"):
        with pytest.raises(ModelNotFoundError) as caught:
            core.accept(name, param="body.model")
        assert (caught.value.status_code, caught.value.param) == (404, "body.model")


def test_tokenize_detokenize_and_embeddings_by_ability() -> None:
    core = core_for(ScriptedEngine())
    assert run(core.tokenize("hello world")) == [0, 1, 2]
    assert run(core.tokenize("hello", add_special=False)) == [1]
    assert run(core.detokenize([1, 2])) == "hello world"
    with pytest.raises(EmbeddingsUnsupportedError) as caught:
        run(core.embed(["hello"]))
    error = caught.value
    assert (error.status_code, error.error_type, error.param) == (
        400,
        "invalid_request_error",
        "model",
    )
    assert "cannot compute embeddings" in error.message
    untokenizing = core_for(ScriptedEngine(abilities=SCHEMA_ABILITIES))
    with pytest.raises(EngineCannotError):
        run(untokenizing.tokenize("hello"))


def test_errors_before_the_first_token_free_the_slot() -> None:
    engine = ScriptedEngine(pieces=())
    core = core_for(engine)
    too_long: Sequence[GenerationSpec] = [
        conversation(output=OutputRequest(tools=(WEATHER,), tool_choice="required"))
    ]
    for spec in too_long:
        with pytest.raises(APIError):
            run(core.complete(spec))  # no call in an empty reply
    assert core.core.models.running == 0


def test_count_prompt_tokens_is_what_a_generation_reports_without_a_slot() -> None:
    engine = ScriptedEngine()
    core = core_for(engine)
    spec = conversation("hello", output=OutputRequest(tools=(WEATHER,)))
    counted = run(core.count_prompt_tokens(spec))
    reply = run(core.complete(spec))
    assert counted == reply.usage.prompt_tokens
    assert len(engine.requests) == 1  # counting ran nothing
    with pytest.raises(EngineCannotError):
        run(core_for(ScriptedEngine(abilities=SCHEMA_ABILITIES)).count_prompt_tokens(spec))


def test_after_a_tool_result_an_echoed_wrapper_is_not_reply_text() -> None:
    turns = (
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "-3C, snow"},
    )  # fmt: skip
    spec = GenerationSpec(Conversation(turns), output=OutputRequest(tools=(WEATHER,)))
    engine = ScriptedEngine(pieces=("<tool_", "response>\n-3C", ", snow\n</tool_response>"))
    events = run(events_of(core_for(engine), spec))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "-3C, snow"
    # Without a tool result in the prompt, the same text is left alone.
    plain = run(core_for(ScriptedEngine(pieces=("<tool_response>x",))).complete(conversation()))
    assert plain.text == "<tool_response>x"
