"""Stop strings that are never sent in part.

A stop string can arrive split across engine reads ("Obs" then "ervation:"), so text
that could still become a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopScanner:
    """Finds the first stop string in streamed text and releases only text before it."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(dict.fromkeys(stop for stop in stops if stop))
        self._pending = ""
        self.stopped = False
        # The stop string found (the first in the text; the longest at one position).
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Add text; return what can be sent now. After a stop string is found, nothing."""
        if self.stopped:
            return ""
        self._pending += text
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            released, self._pending = self._pending[:cut], ""
            return released
        keep = self._held_back_length()
        released = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return released

    def flush(self) -> str:
        """The generation ended without a stop string: release what was held back."""
        released, self._pending = self._pending, ""
        return "" if self.stopped else released

    def _first_stop(self) -> int | None:
        found = [(index, -len(stop), stop) for stop in self.stops
                 if (index := self._pending.find(stop)) >= 0]  # fmt: skip
        if not found:
            return None
        index, _, self.matched = min(found)
        return index

    def _held_back_length(self) -> int:
        """Length of the longest end of the pending text that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:length]):
                    longest = length
                    break
        return longest
