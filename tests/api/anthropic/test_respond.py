"""The core's events as Anthropic answers, on an in-process scripted engine: the whole
message and the stream (each event checked against the SDK's types), an engine failure
mid-stream, and the engine released when a stream is done."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from picolm_server.api.anthropic.respond import message_events, reply_message
from picolm_server.generation import Conversation, GenerationCore, GenerationSpec
from tests.generation.test_core import core_for
from tests.support import anthropic_types
from tests.support.scripted_engine import ScriptedEngine


def spec(**fields: Any) -> GenerationSpec:
    return GenerationSpec(Conversation(({"role": "user", "content": "hi"},)), **fields)


async def streamed(core: GenerationCore, generation: GenerationSpec) -> list[tuple[str, Any]]:
    stream = await core.open(generation)
    body = b"".join([chunk async for chunk in message_events(stream, "scripted")])
    pairs = anthropic_types.parse_sse(body)
    for name, data in pairs:
        anthropic_types.stream_event(name, data)
    return [(name, json.loads(data)) for name, data in pairs]


def test_whole_message() -> None:
    engine = ScriptedEngine(pieces=(" Hello", " world"), prompt_tokens=9, cached_tokens=4)
    reply = asyncio.run(core_for(engine).complete(spec()))
    message = anthropic_types.message(reply_message(reply, "scripted").model_dump_json())
    assert message.content[0].text == "Hello world"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (5, 4)
    assert message.usage.output_tokens == 2


def test_stream_with_a_stop_sequence() -> None:
    engine = ScriptedEngine(pieces=(" one", " two", " END", " three"), prompt_tokens=3)
    events = asyncio.run(streamed(core_for(engine), spec(stop=("END",))))
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == "one two "
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert engine.closed == 1


def test_stream_cut_by_max_tokens() -> None:
    engine = ScriptedEngine(pieces=(" a", " b"), finish="length")
    events = asyncio.run(streamed(core_for(engine), spec(max_tokens=2)))
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[-2][1]["usage"] == {"output_tokens": 2}


def test_engine_failure_mid_stream_is_an_error_event() -> None:
    engine = ScriptedEngine(pieces=(" a", " b", " c"), fail_after=1)
    events = asyncio.run(streamed(core_for(engine), spec()))
    name, data = events[-1]
    assert name == "error" and data["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in events]
    assert engine.closed == 1
