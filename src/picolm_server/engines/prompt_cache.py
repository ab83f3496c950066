"""Saved prompt state for PicoLM (``--cache FILE``), kept on disk and reused safely.

PicoLM loads a KV file without checking that it belongs to the prompt it is given, and
overwrites the file at the end of a run. So this store:

- keys every saved state by the exact token ids it was computed from, and hands a state
  to a run only when those tokens are the first tokens of the run's prompt;
- gives every run its own copy (a failed or cancelled run can never damage a good state,
  and two runs never share a file), and adopts the run's file only after a clean exit
  whose KV header says it holds exactly the prompt's positions;
- records the model's identity beside each state and keeps each model in a folder of its
  own, so states of another model, or files that do not check out, are never used;
- keeps the total size under a budget, evicting the least recently used states.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("picolm_server.prompt_cache")

KV_MAGIC = 0x4B564350  # "KVCP", PicoLM's KVCACHE_MAGIC
_HEADER = struct.Struct("<4I")
_STATE_SUFFIX = ".kv"
_INDEX_SUFFIX = ".json"


@dataclass(frozen=True)
class KVShape:
    """What a PicoLM KV file's size depends on: layers and the K/V row width."""

    layers: int
    kv_dim: int

    def file_size(self, positions: int) -> int:
        # Header, then K and V for every layer and position, as fp16.
        return _HEADER.size + 2 * self.layers * positions * self.kv_dim * 2


def kv_file_positions(path: Path, shape: KVShape) -> int | None:
    """The number of positions a KV file holds, or None if it is not a whole, matching file."""
    try:
        with path.open("rb") as handle:
            header = handle.read(_HEADER.size)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return None
    if len(header) != _HEADER.size:
        return None
    magic, positions, layers, kv_dim = _HEADER.unpack(header)
    if magic != KV_MAGIC or layers != shape.layers or kv_dim != shape.kv_dim:
        return None
    if size != shape.file_size(positions):
        return None
    return int(positions)


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    state_path: Path
    size: int
    last_used: float
    pins: int = 0


@dataclass
class CacheLease:
    """One run's private KV file, and how many prompt tokens it already holds."""

    path: Path
    reused_tokens: int
    source: _Entry | None = field(default=None, repr=False)


def _key(tokens: Sequence[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()[:32]


class PromptCache:
    """Saved prompt states of one model, in ``directory / model_key``."""

    def __init__(
        self, directory: Path, *, max_bytes: int, model_identity: str, shape: KVShape
    ) -> None:
        self.max_bytes = max_bytes
        self.shape = shape
        self.model_identity = model_identity
        model_key = hashlib.sha256(model_identity.encode()).hexdigest()[:16]
        self.directory = directory / model_key
        self.directory.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._load()

    # -- inventory -----------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def _load(self) -> None:
        """Adopt states left by an earlier run of this server, if they check out."""
        for leftover in self.directory.glob(".run-*"):
            leftover.unlink(missing_ok=True)
        for index_path in self.directory.glob(f"*{_INDEX_SUFFIX}"):
            state_path = index_path.with_suffix(_STATE_SUFFIX)
            entry = self._read_index(index_path, state_path)
            if entry is None:
                index_path.unlink(missing_ok=True)
                state_path.unlink(missing_ok=True)
                continue
            self._entries[_key(entry.tokens)] = entry
        for state_path in self.directory.glob(f"*{_STATE_SUFFIX}"):
            if not state_path.with_suffix(_INDEX_SUFFIX).exists():
                state_path.unlink(missing_ok=True)
        self._evict()

    def _read_index(self, index_path: Path, state_path: Path) -> _Entry | None:
        try:
            record = json.loads(index_path.read_text())
            tokens = tuple(int(token) for token in record["tokens"])
            if record["model"] != self.model_identity:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if kv_file_positions(state_path, self.shape) != len(tokens) or not tokens:
            return None
        if index_path.stem != _key(tokens):
            return None
        return _Entry(tokens, state_path, state_path.stat().st_size, float(record.get("used", 0)))

    # -- runs ----------------------------------------------------------------------------

    def best_prefix(self, tokens: Sequence[int]) -> _Entry | None:
        """The saved state whose tokens are the longest token-prefix of ``tokens``."""
        best: _Entry | None = None
        for entry in self._entries.values():
            length = len(entry.tokens)
            if length > len(tokens) or (best is not None and length <= len(best.tokens)):
                continue
            if tuple(tokens[:length]) == entry.tokens:
                best = entry
        return best

    def covered(self, tokens: Sequence[int]) -> int:
        """How many of ``tokens`` a saved state would cover."""
        entry = self.best_prefix(tokens)
        return len(entry.tokens) if entry else 0

    def lease(self, tokens: Sequence[int]) -> CacheLease:
        """A private KV file for a run on ``tokens``, seeded from the best saved state."""
        path = self.directory / f".run-{uuid.uuid4().hex}{_STATE_SUFFIX}"
        with self._lock:
            entry = self.best_prefix(tokens)
            if entry is not None:
                entry.pins += 1
        if entry is None:
            return CacheLease(path, 0)
        try:
            shutil.copyfile(entry.state_path, path)
        except OSError as exc:
            logger.warning("prompt cache: could not copy a saved state: %s", exc)
            path.unlink(missing_ok=True)
            return CacheLease(path, 0)
        finally:
            with self._lock:
                entry.pins -= 1
                entry.last_used = time.time()
        return CacheLease(path, len(entry.tokens), entry)

    def commit(self, lease: CacheLease, tokens: Sequence[int]) -> bool:
        """Keep a run's file as the saved state of ``tokens`` if it holds exactly them."""
        if not tokens or kv_file_positions(lease.path, self.shape) != len(tokens):
            self.discard(lease)
            return False
        key = _key(tokens)
        state_path = self.directory / f"{key}{_STATE_SUFFIX}"
        index_path = self.directory / f"{key}{_INDEX_SUFFIX}"
        now = time.time()
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None and old.pins:
                # Someone is copying the old file; keep theirs, drop ours.
                self._entries[key] = old
                lease.path.unlink(missing_ok=True)
                return False
            os.replace(lease.path, state_path)
            index_path.write_text(
                json.dumps({"model": self.model_identity, "tokens": list(tokens), "used": now})
            )
            self._entries[key] = _Entry(tuple(tokens), state_path, state_path.stat().st_size, now)
            self._evict()
        return True

    @staticmethod
    def discard(lease: CacheLease) -> None:
        lease.path.unlink(missing_ok=True)

    def _evict(self) -> None:
        """Drop least recently used states until the budget holds (pinned ones stay)."""
        by_age = sorted(self._entries.items(), key=lambda item: item[1].last_used)
        total = self.total_bytes
        for key, entry in by_age:
            if total <= self.max_bytes:
                break
            if entry.pins:
                continue
            del self._entries[key]
            total -= entry.size
            with contextlib.suppress(OSError):
                entry.state_path.unlink()
                entry.state_path.with_suffix(_INDEX_SUFFIX).unlink()
