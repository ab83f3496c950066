"""The response writer: event order, sequence numbers, and shapes checked against the
spec and the SDK's types."""

from __future__ import annotations

from typing import Any

import pytest

from picolm_server.api.responses.convert import initial_response
from picolm_server.api.responses.events import ResponseWriter, response_json, sse
from picolm_server.api.responses.types import ResponsesRequest, ResponseUsage
from picolm_server.config.settings import GenerationDefaults
from picolm_server.errors import EngineError
from tests.api.responses.shapes import check_event, check_response, sse_events

USAGE = ResponseUsage.of(12, 5, cached_tokens=3)


def writer(**request: Any) -> ResponseWriter:
    parsed = ResponsesRequest.model_validate({"model": "m", "input": "hi", **request})
    return ResponseWriter(initial_response(parsed, GenerationDefaults(), "m"))


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def checked(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    for event in events:
        check_event(event)
    return events


def test_a_text_reply_in_order() -> None:
    w = writer()
    events = w.start() + w.text("Hel") + w.text("lo") + w.finish(False, USAGE)
    assert types(checked(events)) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    assert events[2]["item"]["content"] == [] and events[2]["item"]["status"] == "in_progress"
    assert events[6]["text"] == "Hello"
    final = check_response(events[-1]["response"])
    assert final.status == "completed" and final.output_text == "Hello"
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 3
    assert final.usage.total_tokens == 17
    assert response_json(w.response) == events[-1]["response"]


def test_calls_after_text_close_the_message_first() -> None:
    w = writer(tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}])
    events = (
        w.start()
        + w.text("Let me look.")
        + w.call("call_1", "f", '{"a":1}', ['{"a"', ":1}"])
        + w.call("call_2", "f", "{}", ["{}"])
        + w.finish(False, USAGE)
    )
    assert types(checked(events))[2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[8]
    assert added["output_index"] == 1 and added["item"]["arguments"] == ""
    assert added["item"]["status"] == "in_progress"
    assert events[11]["arguments"] == '{"a":1}' and events[11]["name"] == "f"
    final = check_response(events[-1]["response"])
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    assert [getattr(item, "call_id", None) for item in final.output] == [None, "call_1", "call_2"]


def test_cut_by_max_output_tokens_is_incomplete() -> None:
    w = writer(max_output_tokens=2)
    events = checked(w.start() + w.text("a b") + w.finish(True, USAGE))
    assert types(events)[-2:] == ["response.output_item.done", "response.incomplete"]
    assert events[-2]["item"]["status"] == "incomplete"
    final = check_response(events[-1]["response"])
    assert final.status == "incomplete"
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"


def test_an_empty_reply_is_one_empty_message() -> None:
    w = writer()
    events = checked(w.start() + w.finish(False, USAGE))
    assert "response.output_text.delta" not in types(events)
    final = check_response(events[-1]["response"])
    assert final.output_text == "" and len(final.output) == 1


def test_a_failure_is_an_error_event_then_failed() -> None:
    w = writer()
    events = checked(w.start() + w.text("par") + w.fail(EngineError("it crashed")))
    assert types(events)[-2:] == ["error", "response.failed"]
    assert events[-2]["message"] == "it crashed" and events[-2]["code"] == "engine_error"
    failed = check_response(events[-1]["response"])
    assert failed.status == "failed" and failed.error is not None


@pytest.mark.parametrize("text", ["line\u2028sep", "é ü 中"])
def test_sse_names_the_event_and_keeps_it_on_one_line(text: str) -> None:
    w = writer()
    body = b"".join(sse(event) for event in w.start() + w.text(text) + w.finish(False, USAGE))
    assert "\u2028".encode() not in body
    events = sse_events(body.decode())
    assert events[4]["delta"] == text
