"""The packed vocabulary finds exactly what a dict built the straightforward way finds:
each string's first id, with PicoLM's binary search simulated for duplicates and for the
prefixes its signed-char quirk can miss (the reference below is that dict)."""

from __future__ import annotations

import random

import pytest

from picolm_server.engines.picolm.tokenizer import PicoLMTokenizer
from picolm_server.engines.picolm.vocab import PackedVocabulary


def reference_search(strs: list[bytes], order: list[int], query: bytes, signed: bool) -> int:
    n = len(query)
    lo, hi = 0, len(order) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        entry = strs[order[mid]]
        head = entry[:n]
        if head == query:
            if len(entry) == n:
                return order[mid]
            if signed and entry[n] >= 0x80:
                lo = mid + 1
            else:
                hi = mid - 1
        elif head < query:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


def reference_lookup(strs: list[bytes], signed: bool) -> dict[bytes, int]:
    """Every non-empty string's id, the whole binary search simulated for each one."""
    order = sorted(range(len(strs)), key=strs.__getitem__)
    found = {s: reference_search(strs, order, s, signed) for s in strs if s}
    return {s: i for s, i in found.items() if i >= 0}


ALPHABET = [b"a", b"b", b"\xc3\xa9", b"\xc3", b"\xa9", b"\xe2\x96\x81", b"\xe2", b"<", b">", b"z"]


@pytest.mark.parametrize("seed", range(40))
def test_lookups_match_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    strs = [
        b"".join(rng.choices(ALPHABET, k=rng.randint(0, 4))) for _ in range(rng.randint(1, 300))
    ]
    strs += rng.choices(strs, k=rng.randint(0, 20))  # duplicates
    for signed in (True, False):
        expected = reference_lookup(strs, signed)
        tokenizer = PicoLMTokenizer(strs, [0.0] * len(strs), signed_char=signed)
        probes = {*strs, *(s[:k] for s in strs for k in range(len(s))), b"zzzzz", b"\xff"}
        for probe in probes:
            assert tokenizer.lookup(probe) == expected.get(probe, -1), (probe, signed)
        assert [tokenizer.piece_bytes(i) for i in range(len(strs))] == strs


def test_a_vocabulary_of_one_empty_string_finds_nothing() -> None:
    vocabulary = PackedVocabulary([b""])
    assert len(vocabulary) == 1 and vocabulary.string(0) == b""
    assert vocabulary.find(b"") == -1 and vocabulary.find(b"a") == -1
    assert b"" not in vocabulary
