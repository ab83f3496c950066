"""A streamed ``tool_use`` block through the official ``anthropic`` SDK, in-process over
the scripted engine: its input arrives in several ``input_json_delta`` events, as the
generation gives the call's arguments, and the SDK's accumulated message holds the
input they join to."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import anyio
import httpx2

from picolm_server.server.app import create_app
from tests.api.anthropic.test_routes import EMAIL
from tests.generation.test_core import core_for
from tests.support.scripted_engine import ScriptedEngine

INPUT = {"to": "ann@example.com", "subject": "The minutes of Tuesday's meeting"}
REPLY = '<tool_call>\n{"name": "send_email", "arguments": ' + json.dumps(INPUT) + "}\n</tool_call>"


async def stream_call() -> tuple[list[Any], anthropic.types.Message]:
    app = create_app(core_for(ScriptedEngine(pieces=(REPLY,))).core, log_requests=False)
    # This SDK brings its own httpx (httpx2): its client is given the app's transport.
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as http:
        client = anthropic.AsyncAnthropic(
            api_key="unused", base_url="http://test", http_client=http, max_retries=0
        )
        async with client.messages.stream(
            model="scripted",
            max_tokens=100,
            tools=[EMAIL],  # type: ignore[list-item]
            tool_choice={"type": "tool", "name": "send_email"},
            messages=[{"role": "user", "content": "Mail Ann the minutes"}],
        ) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_message()
    return events, final


def test_tool_input_streams_in_pieces_that_join_to_the_input() -> None:
    events, final = anyio.run(stream_call)
    pieces = [
        event.delta.partial_json
        for event in events
        if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
    ]
    assert len(pieces) > 1
    joined = "".join(pieces)
    assert json.loads(joined) == INPUT
    (block,) = [block for block in final.content if block.type == "tool_use"]
    assert block.name == "send_email" and block.input == json.loads(joined)
    assert final.stop_reason == "tool_use"
