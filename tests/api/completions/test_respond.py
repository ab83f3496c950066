"""Core events as ``text_completion`` bodies and chunks, checked against OpenAI's spec."""

from __future__ import annotations

import json

import pytest

from picolm_server.api.completions.respond import (
    ChunkWriter,
    finish_reason,
    finished_events,
    text_completion,
)
from picolm_server.generation import Usage
from tests.support.openapi import check_schema, requires_spec


def payload(event: bytes) -> dict[str, object]:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    parsed: dict[str, object] = json.loads(event[len(b"data: ") : -2])
    return parsed


@pytest.mark.parametrize(("core", "wire"), [("stop", "stop"), ("length", "length")])
def test_finish_reasons(core: str, wire: str) -> None:
    assert finish_reason(core) == wire


@requires_spec
def test_a_reply_is_a_text_completion() -> None:
    body = text_completion("Paris", "stop", Usage(5, 2), "m").model_dump(mode="json")
    check_schema(body, "CreateCompletionResponse")
    assert body["usage"]["total_tokens"] == 7
    assert body["choices"] == [
        {"text": "Paris", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]


def test_a_stream_without_generation_echoes_then_finishes() -> None:
    writer = ChunkWriter("m", include_usage=True)
    events = finished_events(writer, "Echo me", "length", Usage(3, 0))
    assert events[-1] == b"data: [DONE]\n\n"
    first, last, usage = (payload(event) for event in events[:-1])
    assert first["choices"] == [
        {"text": "Echo me", "index": 0, "logprobs": None, "finish_reason": None}
    ]
    assert "usage" not in first
    assert last["choices"] == [
        {"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}
    ]
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 0,
        "total_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    assert len({chunk["id"] for chunk in (first, last, usage)}) == 1


def test_no_usage_chunk_unless_asked() -> None:
    events = finished_events(ChunkWriter("m", include_usage=False), "", "stop", Usage(1, 0))
    assert len(events) == 2  # the finish chunk and [DONE]
