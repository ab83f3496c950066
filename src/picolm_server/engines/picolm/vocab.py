"""PicoLM's vocabulary, held compactly: its strings and the lookup of a string's id.

Every string is in one ``bytes`` object (each followed by a NUL, which no string holds:
PicoLM cuts its strings at the first one), found by an array of start offsets; the
lookup is an open-addressing hash table in an array of ids. A 32,000-entry vocabulary
held as a list of ``bytes`` and a dict from string to id is about 4.5 MiB of Python
objects; held so it is about 0.6 MiB, for a lookup that runs in Python instead of a
dict's C (a fraction of a microsecond; docs/benchmarks.md).

Which id a string finds is decided by the tokenizer (:mod:`.tokenizer`, which
reproduces PicoLM's binary search and its quirks): the table starts with each non-empty
string's first id, and :meth:`PackedVocabulary.resolve` changes what a string finds.
"""

from __future__ import annotations

import array
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator

# A table slot holds -1 when empty, the id a string finds (>= 0), or -2 - id for a
# string of the vocabulary (that id's) that the lookup does not find.
_EMPTY = -1


def _unfound(token_id: int) -> int:
    return -2 - token_id


def _grown(
    slots: array.array[int], blob: bytearray, starts: array.array[int]
) -> tuple[array.array[int], int]:
    """The table at twice its size, its entries placed again (each string hashed once
    more: a few times in all while a vocabulary is read)."""
    grown = array.array("i", [_EMPTY]) * (2 * len(slots))
    mask = len(grown) - 1
    for held in slots:
        if held == _EMPTY:
            continue
        slot = hash(bytes(blob[starts[held] : starts[held + 1] - 1])) & mask
        while grown[slot] != _EMPTY:
            slot = (slot + 1) & mask
        grown[slot] = held
    return grown, mask


class PackedVocabulary:
    """The strings of a vocabulary by id, and the id each string finds (or -1)."""

    def __init__(self, strings: Iterable[bytes], size: int = 0) -> None:
        """``strings`` in id order, each without NUL bytes, taken one at a time;
        ``size``, how many there are, saves growing the table as they come."""
        # Each string followed by a NUL; string i at starts[i]:starts[i + 1] - 1. The
        # table is filled in the same pass (at most half full: a lookup probes 1.5
        # slots on average; it grows if more strings come than ``size`` said).
        blob = bytearray()
        starts = array.array("I", [0])
        capacity = 8
        while capacity < 2 * size:
            capacity *= 2
        slots = array.array("i", [_EMPTY]) * capacity
        mask = len(slots) - 1
        # Strings that are the string of more than one id (their first id finds them).
        self.duplicates: set[bytes] = set()
        # The loop runs once per entry while the server starts: locals, bound methods,
        # and the table's size checked only once it may be full.
        empty, add_start, add_byte = _EMPTY, starts.append, blob.append
        full_at = len(slots) // 2 - 1  # the id at which the table is half full
        for token_id, string in enumerate(strings):
            if string:  # a lookup's query is never empty
                slot = hash(string) & mask
                while (held := slots[slot]) != empty:
                    if blob[starts[held] : starts[held + 1] - 1] == string:
                        self.duplicates.add(string)
                        break
                    slot = (slot + 1) & mask
                else:
                    slots[slot] = token_id
            blob += string
            add_byte(0)
            add_start(len(blob))
            if token_id >= full_at:
                slots, mask = _grown(slots, blob, starts)
                full_at = len(slots) // 2 - 1
        self._blob = bytes(blob)
        del blob
        self._starts = starts
        self.size = len(starts) - 1
        self._slots = slots
        self._mask = mask
        self.find = self._finder()

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        """The strings in id order."""
        blob, start = self._blob, 0
        for end in itertools.islice(self._starts, 1, None):
            yield blob[start : end - 1]
            start = end

    @property
    def blob(self) -> bytes:
        """Every string in id order, each followed by a NUL."""
        return self._blob

    @property
    def starts(self) -> array.array[int]:
        """Where each string starts in :attr:`blob`, and (last) the blob's length."""
        return self._starts

    def string(self, token_id: int) -> bytes:
        """The string of ``token_id`` (a valid id)."""
        return self._blob[self._starts[token_id] : self._starts[token_id + 1] - 1]

    def longest(self) -> int:
        """The length of the longest string (0 for none)."""
        starts = self._starts
        return max(map(operator.sub, itertools.islice(starts, 1, None), starts), default=1) - 1

    def length(self, token_id: int) -> int:
        return self._starts[token_id + 1] - self._starts[token_id] - 1

    def _finder(self) -> Callable[[bytes], int]:
        # A closure over locals: the tokenizer calls it for every character and every
        # candidate merge, and local lookups are the cheapest Python has.
        slots, starts, blob, mask = self._slots, self._starts, self._blob, self._mask

        def find(key: bytes) -> int:
            """The id the lookup finds for ``key``, or -1."""
            slot = hash(key) & mask
            while True:
                held = slots[slot]
                if held >= 0:
                    if blob[starts[held] : starts[held + 1] - 1] == key:
                        return held
                elif held == _EMPTY:
                    return -1
                elif blob[starts[-2 - held] : starts[-1 - held] - 1] == key:
                    return -1  # a string of the vocabulary the lookup does not find
                slot = (slot + 1) & mask

        return find

    def _slot(self, key: bytes) -> int:
        """The slot that holds ``key``, or the empty slot where it would go."""
        slots, mask = self._slots, self._mask
        slot = hash(key) & mask
        while True:
            held = slots[slot]
            if held == _EMPTY or self.string(held if held >= 0 else _unfound(held)) == key:
                return slot
            slot = (slot + 1) & mask

    def __contains__(self, key: bytes) -> bool:
        """Whether ``key`` is the string of some id (found by the lookup or not)."""
        return bool(key) and self._slots[self._slot(key)] != _EMPTY

    def resolve(self, key: bytes, token_id: int) -> None:
        """Make the lookup of ``key`` (a string of the vocabulary) find ``token_id``, an
        id whose string it is, or nothing when ``token_id`` is -1."""
        slot = self._slot(key)
        held = self._slots[slot]
        if held == _EMPTY:
            raise KeyError(key)
        if token_id < 0:
            self._slots[slot] = _unfound(held) if held >= 0 else held
        else:
            self._slots[slot] = token_id

    def found_ids(self) -> Iterator[int]:
        """The ids the lookup finds, one per findable string, in no particular order."""
        return (held for held in self._slots if held >= 0)

    def findable_blob(self) -> bytes:
        """Every findable string, each followed by a NUL: a substring of it that holds
        no NUL is a substring of some findable string, and only then."""
        if all(held >= _EMPTY for held in self._slots):
            return self._blob  # every string is findable: the blob itself, no copy
        return b"".join(self.string(token_id) + b"\0" for token_id in self.found_ids())
