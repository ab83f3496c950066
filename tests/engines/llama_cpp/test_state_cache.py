"""The host-memory cache of prompt states: longest-prefix matching, the byte budget and
its least-recently-used order (pure bookkeeping, no model)."""

from __future__ import annotations

import pytest

pytest.importorskip("numpy")

from picolm_server.engines.llama_cpp.state_cache import StateCache, as_tokens, common_prefix


def test_common_prefix() -> None:
    assert common_prefix(as_tokens([1, 2, 3]), as_tokens([1, 2, 4])) == 2
    assert common_prefix(as_tokens([1, 2]), as_tokens([1, 2, 3])) == 2
    assert common_prefix(as_tokens([]), as_tokens([1])) == 0
    assert common_prefix(as_tokens([5]), as_tokens([1])) == 0


def test_best_match_is_the_longest_shared_prefix() -> None:
    cache = StateCache(10_000)
    cache.put(as_tokens([1, 2, 3, 4]), b"a" * 10)
    cache.put(as_tokens([1, 2, 9, 9, 9]), b"b" * 10)
    entry, shared = cache.best_match(as_tokens([1, 2, 3, 7]))
    assert entry is not None and entry.data == b"a" * 10 and shared == 3
    entry, shared = cache.best_match(as_tokens([8]))
    assert entry is None and shared == 0


def test_a_longer_state_replaces_its_prefixes() -> None:
    cache = StateCache(10_000)
    cache.put(as_tokens([1, 2]), b"x")
    cache.put(as_tokens([1, 2, 3]), b"y")
    cache.put(as_tokens([1, 5]), b"z")
    assert len(cache) == 2
    assert cache.holds(as_tokens([1, 2])) and cache.holds(as_tokens([1, 2, 3]))
    assert not cache.holds(as_tokens([1, 2, 3, 4]))


def test_budget_drops_the_least_recently_used() -> None:
    entry_size = 100 + 4 * 3  # data and the int32 token ids
    cache = StateCache(3 * entry_size)
    for first in range(3):
        cache.put(as_tokens([first, 0, 0]), bytes(100))
    cache.best_match(as_tokens([0, 0, 0]))  # the oldest is used again
    cache.put(as_tokens([3, 0, 0]), bytes(100))
    assert cache.bytes == 3 * entry_size <= cache.max_bytes
    assert cache.holds(as_tokens([0, 0, 0]))
    assert not cache.holds(as_tokens([1, 0, 0]))  # the least recently used went
    assert cache.holds(as_tokens([2, 0, 0])) and cache.holds(as_tokens([3, 0, 0]))


def test_a_state_larger_than_the_budget_is_not_kept() -> None:
    cache = StateCache(50)
    cache.put(as_tokens([1]), bytes(100))
    assert len(cache) == 0 and cache.bytes == 0
