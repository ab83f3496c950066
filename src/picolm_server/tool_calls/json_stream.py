"""A JSON reply released as it is generated: what a streamed reply may send before the
whole reply is known and checked.

The non-streamed reply is the generated text stripped of surrounding whitespace, and a
streamed one must join to exactly that: leading whitespace is never sent, whitespace is
held until more text follows it (in a string too: a reply cut off there is stripped),
and nothing after the end of the first top-level object or array is released (text
there makes the reply invalid, and the check at the end says so).
"""

from __future__ import annotations

_WHITESPACE = " \t\n\r"


class JSONPieces:
    """Feeds on generated text; returns the part that can be sent now."""

    def __init__(self) -> None:
        self._held = ""  # whitespace that may still be trailing
        self._started = False
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._ended = False  # the top-level object or array is closed
        self._rest = ""  # text after the end (never released here)

    @property
    def rest(self) -> str:
        """What was not released: held whitespace and anything after the value."""
        return self._held + self._rest

    def feed(self, text: str) -> str:
        if self._ended:
            self._rest += text
            return ""
        released: list[str] = []
        for position, char in enumerate(text):
            if not self._started:
                if char in _WHITESPACE:
                    continue
                self._started = True
            if char in _WHITESPACE:
                # Held even inside a string: a reply cut off there ends stripped.
                self._held += char
                self._track(char)
                continue
            released.append(self._held)
            self._held = ""
            released.append(char)
            self._track(char)
            if self._ended:
                self._rest = text[position + 1 :]
                break
        return "".join(released)

    def _track(self, char: str) -> None:
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
        elif char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
            if self._depth <= 0:
                self._ended = True
