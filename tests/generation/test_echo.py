"""An echoed tool-result wrapper is removed from a reply, streamed in any pieces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from picolm_server.generation.echo import WrapperEcho


def filtered(pieces: list[str]) -> str:
    echo = WrapperEcho()
    return "".join(echo.feed(piece) for piece in pieces) + echo.flush()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("<tool_response>\n22 degrees and raining\n</tool_response>", "22 degrees and raining"),
        ("<tool_response>\n18C\n</tool_response>\nIt is warm.", "18C\nIt is warm."),
        ('<tool_response>\n{"temp": 5}', '{"temp": 5}'),
        ("It is sunny in Paris.", "It is sunny in Paris."),
        ("<tool", "<tool"),
        ("<b>bold</b>", "<b>bold</b>"),
        ("The tag <tool_response> is mid-text", "The tag <tool_response> is mid-text"),
        ("", ""),
    ],
)
def test_whole_replies(reply: str, expected: str) -> None:
    assert filtered([reply]) == expected


@given(
    st.sampled_from(
        [
            "<tool_response>\n22 degrees and raining\n</tool_response>",
            "<tool_response>\n18C\n</tool_response>\nIt is warm.",
            "It is </tool_response> sunny",
            "<tool_response>\nnever closed\n\n",
        ]
    ),
    st.lists(st.integers(1, 6), max_size=20),
)
def test_any_split_gives_the_same_text(reply: str, cuts: list[int]) -> None:
    pieces, position = [], 0
    for cut in cuts:
        pieces.append(reply[position : position + cut])
        position += cut
    pieces.append(reply[position:])
    assert filtered(pieces) == filtered([reply])


def test_text_streams_while_inside_the_wrapper() -> None:
    echo = WrapperEcho()
    assert echo.feed("<tool_res") == ""
    assert echo.feed("ponse>\nIt is ") == "It is "
    assert echo.feed("18C\n</tool_") == "18C"
    assert echo.feed("response>") == ""
    assert echo.feed(" Done.") == " Done."
