"""Computed prompt states kept in host memory, so that a conversation that comes back
after others starts after its history.

An entry is a sequence's llama.cpp state (its KV cache rows, bit for bit as
``llama_state_seq_get_data`` gives them) with the token ids it holds. A new prompt can
start from any entry it shares a prefix with: the state is restored whole and cut back
to the shared part, so one conversation's entry also serves every other conversation
with the same system prompt. The entries are kept under a byte budget, least recently
used dropped first; an entry whose tokens begin another, longer entry is dropped as
that one arrives (it would never be the better match).

Pure bookkeeping: the native calls that make and restore states are the decode loop's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.int32]


def as_tokens(tokens: Sequence[int]) -> Tokens:
    return np.asarray(tokens, dtype=np.int32)


def common_prefix(a: Tokens, b: Tokens) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differs = np.flatnonzero(a[:n] != b[:n])
    return int(differs[0]) if len(differs) else n


@dataclass(frozen=True)
class SavedState:
    tokens: Tokens
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data) + self.tokens.nbytes


class StateCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, SavedState] = OrderedDict()
        self._next_key = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def best_match(self, tokens: Tokens) -> tuple[SavedState | None, int]:
        """The entry sharing the longest prefix with ``tokens``, and that length (the
        entry becomes the most recently used)."""
        best_key, best_length = -1, 0
        for key, entry in self._entries.items():
            length = common_prefix(entry.tokens, tokens)
            if length > best_length:
                best_key, best_length = key, length
        if best_key < 0:
            return None, 0
        self._entries.move_to_end(best_key)
        return self._entries[best_key], best_length

    def most_recent_first(self) -> list[SavedState]:
        return list(reversed(self._entries.values()))

    def holds(self, tokens: Tokens) -> bool:
        """Whether an entry already holds ``tokens`` (or a longer run starting with them)."""
        return any(
            len(entry.tokens) >= len(tokens) and common_prefix(entry.tokens, tokens) == len(tokens)
            for entry in self._entries.values()
        )

    def put(self, tokens: Tokens, data: bytes) -> None:
        """Keep a state; entries that are prefixes of it go, then the least recently used
        until the budget holds. A state larger than the whole budget is not kept."""
        entry = SavedState(tokens.copy(), data)
        if entry.size > self.max_bytes:
            return
        for key in [
            key
            for key, old in self._entries.items()
            if len(old.tokens) <= len(tokens)
            and common_prefix(old.tokens, tokens) == len(old.tokens)
        ]:
            self._drop(key)
        self._entries[self._next_key] = entry
        self._next_key += 1
        self.bytes += entry.size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: int) -> None:
        self.bytes -= self._entries.pop(key).size

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
