"""The Responses service over a generation core on a scripted engine (no HTTP): core
events become response events, and the store carries a conversation on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from picolm_server.api.responses.service import (
    PreviousResponseNotFoundError,
    ResponseNotFoundError,
    ResponsesService,
)
from picolm_server.api.responses.store import ResponseStore
from picolm_server.api.responses.types import ResponsesRequest
from picolm_server.errors import ModelNotFoundError
from tests.api.responses.shapes import check_event, check_response, sse_events
from tests.support.scripted_engine import ScriptedEngine
from tests.support.scripted_shelf import scripted_core

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def service_for(engine: ScriptedEngine, tmp_path: Path) -> ResponsesService:
    core = scripted_core(engine).core
    return ResponsesService(core, ResponseStore(tmp_path / "responses.sqlite3"))


def request(**fields: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "scripted", **fields})


def streamed(service: ResponsesService, parsed: ResponsesRequest) -> list[dict[str, Any]]:
    async def run() -> bytes:
        return b"".join([chunk async for chunk in await service.open_stream(parsed)])

    events = sse_events(anyio.run(run).decode())
    for event in events:
        check_event(event)
    return events


def test_a_streamed_call_from_core_events(tmp_path: Path) -> None:
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    engine = ScriptedEngine(pieces=[call[i : i + 7] for i in range(0, len(call), 7)])
    service = service_for(engine, tmp_path)
    events = streamed(service, request(input="Weather?", tools=[WEATHER], tool_choice="required"))
    kinds = [event["type"] for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(deltas) == '{"city":"Paris"}'
    final = check_response(events[-1]["response"])
    assert final.output[0].type == "function_call"
    assert final.usage is not None and final.usage.output_tokens == len(engine.pieces)


def test_previous_response_id_carries_the_conversation(tmp_path: Path) -> None:
    engine = ScriptedEngine(pieces=["It is", " sunny."])
    service = service_for(engine, tmp_path)
    first = anyio.run(service.create, request(instructions="Be brief.", input="Weather?"))
    assert first.output[0].type == "message" and first.status == "completed"
    second = anyio.run(
        service.create, request(input="And tomorrow?", previous_response_id=first.id)
    )
    prompt = engine.requests[-1].prompt
    assert "Weather?" in prompt and "It is sunny." in prompt and "And tomorrow?" in prompt
    assert "Be brief." not in prompt  # instructions are not carried over
    stored = anyio.run(service.stored, second.id)
    assert [item["type"] for item in stored.context] == ["message", "message", "message"]
    anyio.run(service.delete, second.id)
    with pytest.raises(ResponseNotFoundError):
        anyio.run(service.stored, second.id)
    with pytest.raises(PreviousResponseNotFoundError):
        anyio.run(service.create, request(input="x", previous_response_id=second.id))


def test_the_model_is_checked_before_anything_runs(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    service = service_for(engine, tmp_path)
    with pytest.raises(ModelNotFoundError):
        anyio.run(service.create, ResponsesRequest.model_validate({"model": "x", "input": "hi"}))
    assert not engine.requests


def test_an_engine_failure_mid_stream_fails_the_response(tmp_path: Path) -> None:
    service = service_for(ScriptedEngine(pieces=["a", "b", "c"], fail_after=1), tmp_path)
    events = streamed(service, request(input="hi"))
    assert [event["type"] for event in events][-2:] == ["error", "response.failed"]
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"
