"""Streaming helpers: stop strings found across pieces and never released in part; SSE events."""

from __future__ import annotations

import json

import pytest

from picolm_server.api.chat.types import ChatCompletionChunk, ChunkChoice, Delta
from picolm_server.generation.stop_scan import StopScanner
from picolm_server.http.sse import DONE_EVENT, ContentChunkTemplate, sse_event


def feed_all(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    scanner = StopScanner(stops)
    released = [scanner.feed(piece) for piece in pieces]
    if not scanner.stopped:
        released.append(scanner.flush())
    return released, scanner.stopped


def test_no_stops_passes_everything_through() -> None:
    released, stopped = feed_all([], ["a", "b", ""])
    assert released == ["a", "b", "", ""] and not stopped


def test_stop_in_one_piece() -> None:
    released, stopped = feed_all(["STOP"], ["hello STOP world"])
    assert "".join(released) == "hello " and stopped


def test_stop_split_across_pieces_is_never_released_in_part() -> None:
    released, stopped = feed_all(["Observation:"], ["Thought. Obs", "erv", "ation: x"])
    assert stopped
    assert "".join(released) == "Thought. "
    assert not any("Obs" in piece for piece in released)


def test_held_back_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    scanner = StopScanner(["abc"])
    assert scanner.feed("xxab") == "xx"
    assert scanner.feed("d") == "abd"
    assert scanner.feed("ab") == ""
    assert scanner.flush() == "ab"
    assert not scanner.stopped


def test_earliest_of_several_stops_wins() -> None:
    released, stopped = feed_all(["world", "lo w"], ["hello world"])
    assert "".join(released) == "hel" and stopped


def test_nothing_after_a_stop() -> None:
    scanner = StopScanner(["x"])
    assert scanner.feed("ax") == "a"
    assert scanner.feed("more") == ""
    assert scanner.flush() == ""


def test_empty_and_duplicate_stops_are_ignored() -> None:
    scanner = StopScanner(["", "a", "a"])
    assert scanner.stops == ("a",)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_any_split_gives_the_same_text(size: int) -> None:
    text = "the cat<|im_end|> sat on the mat"
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    released, stopped = feed_all(["<|im_end|>", "mat"], pieces)
    assert "".join(released) == "the cat" and stopped


def test_multibyte_text() -> None:
    released, stopped = feed_all(["é"], ["caf", "é au lait"])
    assert "".join(released) == "caf" and stopped


def test_sse_events() -> None:
    assert sse_event('{"a": "é"}') == 'data: {"a": "é"}\n\n'.encode()
    assert DONE_EVENT == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "content",
    ["Hello", ' "quoted" \\ back', "line\nbreak\ttab", "\x00\x1f\x7f", "é中😀", "", "}{]["],
)
def test_content_chunk_template_equals_the_full_chunk(content: str) -> None:
    def full(text: str) -> str:
        return ChatCompletionChunk(
            id="chatcmpl-1",
            created=1,
            model="m",
            choices=[ChunkChoice(delta=Delta(content=text))],
            system_fingerprint="fp",
        ).model_dump_json()

    marker = "marker-chatcmpl-1"
    template = ContentChunkTemplate(full(marker), marker)
    event = template.render(content)

    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[len(b"data: ") : -2]) == json.loads(full(content))


def test_content_chunk_template_needs_the_marker_once() -> None:
    with pytest.raises(ValueError):
        ContentChunkTemplate('{"a": "x"}', "marker")
