"""Tool-result wrappers a small model copies from its prompt into its reply.

Tool results reach the model inside ``<tool_response>`` ... ``</tool_response>`` (the
Hermes format, and what templates that render tools write). A small model answering
right after one often starts by copying that wrapper. The reply is the text inside and
after it: the opening tag at the very start and the first closing tag after it are
dropped, while text streams (held back only while it could still be one of them).
"""

from __future__ import annotations

OPEN = "<tool_response>"
CLOSE = "</tool_response>"


def _could_start(text: str, tag: str) -> bool:
    return len(text) < len(tag) and tag.startswith(text)


class WrapperEcho:
    """Feeds on reply text; returns what can be sent with an echoed wrapper removed."""

    def __init__(self) -> None:
        self._pending = ""
        self._state = "start"  # "start" -> "inside" (wrapper opened) | "through"
        self._inner_started = False  # newlines right after the opening tag are its own

    def feed(self, text: str) -> str:
        if self._state == "through":
            return text
        self._pending += text
        if self._state == "start":
            head = self._pending.lstrip()
            if not head or _could_start(head, OPEN):
                return ""
            if not head.startswith(OPEN):
                self._state = "through"
                released, self._pending = self._pending, ""
                return released
            self._state = "inside"
            self._pending = head[len(OPEN) :]
        return self._inside()

    def _inside(self) -> str:
        if not self._inner_started:
            self._pending = self._pending.lstrip("\n")
            if not self._pending:
                return ""
            self._inner_started = True
        at = self._pending.find(CLOSE)
        if at >= 0:
            self._state = "through"
            inner, after = self._pending[:at], self._pending[at + len(CLOSE) :]
            self._pending = ""
            return inner.rstrip("\n") + after
        keep = 0
        for length in range(min(len(CLOSE) - 1, len(self._pending)), 0, -1):
            if self._pending.endswith(CLOSE[:length]):
                keep = length
                break
        # Newlines before a closing tag are the wrapper's: held with it.
        stem = self._pending[: len(self._pending) - keep]
        held_newlines = len(stem) - len(stem.rstrip("\n"))
        cut = len(stem) - held_newlines
        released, self._pending = self._pending[:cut], self._pending[cut:]
        return released

    def flush(self) -> str:
        """The reply ended: what was held back is text after all."""
        released, self._pending = self._pending, ""
        if self._state == "start":
            return released
        return released.rstrip("\n") if self._state == "inside" else released
