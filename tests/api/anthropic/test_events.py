"""The message stream's events, checked against the official SDK's types."""

from __future__ import annotations

import json

from picolm_server.api.anthropic.events import MessageStream
from picolm_server.errors import APIError
from tests.support.anthropic_types import parse_sse, stream_event


def events_of(body: bytes) -> list[tuple[str, dict[str, object]]]:
    pairs = parse_sse(body)
    for name, data in pairs:
        stream_event(name, data)
    return [(name, json.loads(data)) for name, data in pairs]


def test_text_reply_has_anthropics_event_sequence() -> None:
    stream = MessageStream("m")
    body = stream.start(12, 4) + stream.text("Hel") + stream.text("") + stream.text("lo\u2028")
    body += stream.finish("stop", None, 3)
    events = events_of(body)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert isinstance(start, dict)
    assert start["id"].startswith("msg_")
    assert start["usage"] == {
        "input_tokens": 8,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4,
    }
    assert start["stop_reason"] is None and start["content"] == []
    texts = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]  # type: ignore[index]
    assert texts == ["Hel", "lo\u2028"]
    assert "\u2028" not in body.decode()  # written as an escape
    assert events[6][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[6][1]["usage"] == {"output_tokens": 3}


def test_text_then_tool_uses_are_separate_blocks() -> None:
    stream = MessageStream("m")
    body = stream.start(5, 0) + stream.text("Let me look.")
    body += (
        stream.tool_use("get_weather")
        + stream.tool_input('{"city":')
        + stream.tool_input('"Paris"}')
    )
    body += stream.tool_use("get_time") + stream.tool_input("{}")
    body += stream.finish("tool_calls", None, 20)
    events = events_of(body)
    starts = [data for name, data in events if name == "content_block_start"]
    assert [block["index"] for block in starts] == [0, 1, 2]
    blocks = [block["content_block"] for block in starts]
    assert blocks[0] == {"type": "text", "text": "", "citations": None}
    assert blocks[1]["type"] == "tool_use" and blocks[1]["name"] == "get_weather"  # type: ignore[index]
    assert blocks[1]["id"].startswith("toolu_") and blocks[1]["input"] == {}  # type: ignore[index]
    stops = [data["index"] for name, data in events if name == "content_block_stop"]
    assert stops == [0, 1, 2]
    pieces = [
        data["delta"]["partial_json"]  # type: ignore[index]
        for name, data in events
        if name == "content_block_delta" and data["index"] == 1
    ]
    assert json.loads("".join(pieces)) == {"city": "Paris"}
    assert [name for name, _ in events].count("ping") == 1
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"  # type: ignore[index]


def test_stop_sequence_and_max_tokens() -> None:
    stream = MessageStream("m")
    body = stream.start(1, 0) + stream.text("a") + stream.finish("stop", "###", 2)
    delta = events_of(body)[-2][1]["delta"]
    assert delta == {"stop_reason": "stop_sequence", "stop_sequence": "###"}
    stream = MessageStream("m")
    body = stream.start(1, 0) + stream.text("a") + stream.finish("length", None, 2)
    assert events_of(body)[-2][1]["delta"]["stop_reason"] == "max_tokens"  # type: ignore[index]


def test_empty_reply_has_no_block() -> None:
    stream = MessageStream("m")
    events = events_of(stream.start(1, 0) + stream.finish("stop", None, 1))
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]


def test_error_event() -> None:
    stream = MessageStream("m")
    body = stream.start(1, 0) + stream.text("a") + stream.error(APIError("boom"))
    name, data = events_of(body)[-1]
    assert name == "error"
    assert data == {
        "type": "error",
        "error": {"type": "api_error", "message": "boom"},
        "request_id": None,
    }
