"""Core events as chat completions and chunks, over a scripted engine (no HTTP)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from picolm_server.api.chat.respond import chat_completion, chunk_events
from picolm_server.generation import Conversation, GenerationSpec, OutputRequest
from tests.generation.test_core import WEATHER, core_for
from tests.support.scripted_engine import ScriptedEngine

SPEC = GenerationSpec(Conversation(({"role": "user", "content": "hi"},)))


def sse(engine: ScriptedEngine, spec: GenerationSpec, include_usage: bool) -> list[Any]:
    async def collect() -> list[bytes]:
        core = core_for(engine)
        stream = await core.open(spec)
        return [event async for event in chunk_events(stream, "m", include_usage)]

    events = asyncio.run(collect())
    assert all(event.startswith(b"data: ") and event.endswith(b"\n\n") for event in events)
    payloads = [event[len(b"data: ") : -2].decode() for event in events]
    return [payload if payload == "[DONE]" else json.loads(payload) for payload in payloads]


def test_text_chunks_then_finish_usage_and_done() -> None:
    chunks = sse(ScriptedEngine(pieces=("Hel", "lo")), SPEC, include_usage=True)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:3]] == ["Hel", "lo"]
    assert chunks[3]["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"
    }  # fmt: skip
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 2
    assert chunks[5] == "[DONE]"
    assert all("usage" not in c for c in sse(ScriptedEngine(), SPEC, False)[:-1])


def test_a_call_streams_as_tool_call_deltas() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    spec = GenerationSpec(SPEC.prompt, output=OutputRequest(tools=(WEATHER,)))
    chunks = sse(ScriptedEngine(pieces=(text,)), spec, include_usage=False)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    first = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert (first["index"], first["type"], first["function"]) == (
        0, "function", {"name": "get_weather", "arguments": ""}
    )  # fmt: skip
    arguments = "".join(
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks[2:-2]
    )
    assert json.loads(arguments) == {"city": "Oslo"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_an_engine_failure_after_the_first_chunk_is_reported_in_band() -> None:
    chunks = sse(ScriptedEngine(pieces=("a", "b"), fail_after=1), SPEC, include_usage=False)
    assert chunks[1]["choices"][0]["delta"]["content"] == "a"
    # The error ends the stream: no finish chunk, and no [DONE] (the generation failed).
    assert chunks[2:] == [{"error": {"message": "The scripted engine failed.",
                                     "type": "server_error", "param": None,
                                     "code": "engine_error"}}]  # fmt: skip


def test_a_reply_of_calls_has_content_null() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    spec = GenerationSpec(SPEC.prompt, output=OutputRequest(tools=(WEATHER,)))

    async def reply() -> Any:
        return await core_for(ScriptedEngine(pieces=(text,))).complete(spec)

    completion = chat_completion(asyncio.run(reply()), "m").model_dump()
    message = completion["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["name"]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
