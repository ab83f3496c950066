"""PicoLM's vocabulary, held compactly: its strings and the lookup of a string's id.

Every string is in one ``bytes`` object (each followed by a NUL, which no string holds:
PicoLM cuts its strings at the first one), found by an array of start offsets; the
lookup is an open-addressing hash table in an array of ids. A 32,000-entry vocabulary
held as a list of ``bytes`` and a dict from string to id is about 4.5 MiB of Python
objects; held so it is about 0.6 MiB, for a lookup that runs in Python instead of a
dict's C (a fraction of a microsecond; docs/benchmarks.md). It is built from a list of
the strings with C-level passes (join, map, dict), about 15 ms for 32,000 entries; the
list is dropped once it is built.

Which id a string finds is decided by the tokenizer (:mod:`.picolm_tokenizer`, which
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


class PackedVocabulary:
    """The strings of a vocabulary by id, and the id each string finds (or -1)."""

    def __init__(self, strings: Iterable[bytes]) -> None:
        """``strings`` in id order, each without NUL bytes."""
        # Built with C-level passes (join, map, dict, set) wherever the order of the
        # work allows: this runs while the server starts, for every entry.
        listed = strings if isinstance(strings, list) else list(strings)
        # Each string followed by a NUL; string i at starts[i]:starts[i + 1] - 1.
        self._blob = b"".join(map(operator.add, listed, itertools.repeat(b"\0")))
        self._starts: array.array[int] = array.array(
            "I",
            itertools.accumulate(
                map(operator.add, map(len, listed), itertools.repeat(1)), initial=0
            ),
        )
        self.size = len(listed)
        # The table: open addressing, at most half full (a lookup probes 1.5 slots on
        # average). Each bucket's first string goes to its own slot; the others (about
        # a fifth) are placed after them, probing. Any order of insertion gives a table
        # whose every lookup works, and each string is in it once.
        capacity = 8
        while capacity < 2 * len(listed):
            capacity *= 2
        slots = array.array("i", [_EMPTY]) * capacity
        mask = capacity - 1
        # Each distinct non-empty string once, at its first id (a query is never
        # empty); the strings of more than one id are noted (their first id finds them).
        first_ids = dict(zip(reversed(listed), reversed(range(len(listed))), strict=True))
        first_ids.pop(b"", None)
        ids = sorted(first_ids.values())
        self.duplicates: set[bytes] = set()
        if len(ids) + listed.count(b"") < len(listed):
            self.duplicates = {
                listed[i] for i in set(range(len(listed))).difference(ids) if listed[i]
            }
        del first_ids
        buckets = list(
            map(operator.and_, map(hash, map(listed.__getitem__, ids)), itertools.repeat(mask))
        )
        firsts = dict(zip(reversed(buckets), reversed(ids), strict=True))
        for bucket, token_id in firsts.items():
            slots[bucket] = token_id
        for token_id in sorted(set(ids).difference(firsts.values())):
            slot = hash(listed[token_id]) & mask
            while slots[slot] != _EMPTY:
                slot = (slot + 1) & mask
            slots[slot] = token_id
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
