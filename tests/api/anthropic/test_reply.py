"""A finished generation as an Anthropic Message, checked against the SDK's types."""

from __future__ import annotations

import pytest

from picolm_server.api.anthropic.reply import Call, message, stop_reason
from picolm_server.api.anthropic.types import Usage
from tests.support import anthropic_types


@pytest.mark.parametrize(
    ("finish", "sequence", "expected"),
    [
        ("stop", None, "end_turn"),
        ("stop", "END", "stop_sequence"),
        ("length", None, "max_tokens"),
        ("tool_calls", None, "tool_use"),
    ],
)
def test_stop_reasons(finish: str, sequence: str | None, expected: str) -> None:
    assert stop_reason(finish, sequence) == expected  # type: ignore[arg-type]


def test_text_and_calls() -> None:
    reply = message(
        model="m",
        text="Checking.",
        calls=[Call("get_weather", '{"city":"Paris"}')],
        finish="tool_calls",
        stop_sequence=None,
        usage=Usage.of(30, 12, 10),
    )
    parsed = anthropic_types.message(reply.model_dump_json())
    assert parsed.id.startswith("msg_") and len(parsed.id) == len("msg_01") + 22
    assert [block.type for block in parsed.content] == ["text", "tool_use"]
    call = parsed.content[1]
    assert call.type == "tool_use"
    assert call.id.startswith("toolu_") and call.input == {"city": "Paris"}
    assert parsed.stop_reason == "tool_use"
    assert parsed.usage.input_tokens == 20 and parsed.usage.cache_read_input_tokens == 10


def test_empty_text_has_no_block() -> None:
    reply = message(
        model="m", text="", calls=[], finish="stop", stop_sequence=None, usage=Usage.of(1, 1)
    )
    assert anthropic_types.message(reply.model_dump_json()).content == []
