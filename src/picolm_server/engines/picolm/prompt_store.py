"""Saved prompt state for PicoLM (``--cache FILE``), kept on disk and reused safely.

PicoLM loads a KV file without checking that it belongs to the prompt it is given, and
overwrites the file at the end of a run. So this store:

- keys every saved state by the exact token ids it was computed from, and hands a state
  to a run only for positions whose tokens are exactly the run's first tokens (a longer
  state is cut down to the common prefix: the KV file format allows it);
- gives every run its own copy (a failed or cancelled run can never damage a good state,
  and two runs never share a file), and adopts the run's file only after a clean exit
  whose KV header and size say it holds exactly the prompt's positions;
- records the model's identity and a SHA-256 of the file beside each state (computed by
  the server once PicoLM has exited cleanly) and keeps each model in a folder of its own;
  a state is checked against its digest while it is copied for a run, so a state of
  another model, or a file that does not check out (wrong header, size or digest), is
  never used, and one that fails its digest is deleted;
- keeps the total size under a budget, evicting the least recently used states;
- keeps its files private and survives its directory going away (see ``state_dir``):
  reuse is then off, requests are served without it, and it comes back by itself.

The file format is :mod:`.kv_file`'s. PicoLM's reuse is off by one: a run that starts
from a saved state of P positions must be given a prompt text crafted for it, not the
true prompt (:mod:`.crafted_prompt`); :meth:`PromptCache.lease` takes that crafting as a
function.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..saved_states import model_folder, over_budget, tokens_key
from ..state_dir import (
    FILE_MODE,
    RECHECK_SECONDS,
    RUN_PREFIX,
    StateDir,
    create_private_file,
    write_private_file,
)
from .kv_file import KVShape, StateCorrupted, copy_kv_prefix, file_sha256, kv_file_positions

# The logging channel keeps the name the server's logs have always used.
logger = logging.getLogger("picolm_server.prompt_cache")

_STATE_SUFFIX = ".kv"
_INDEX_SUFFIX = ".json"
# Reuse fewer positions than a saved state holds only this far back looking for a cut
# point whose crafted prompt checks out.
_MAX_CUT_TRIES = 24

# A run tries at most this many saved states: each one that fails its digest is deleted
# and the next best is tried.
_MAX_SOURCES = 3
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    state_path: Path
    size: int
    last_used: float
    sha256: str
    pins: int = 0


@dataclass
class CacheLease:
    """One run's private KV file, how many prompt positions it already holds, and the
    prompt to give PicoLM for it (None: the true prompt, which is right for a fresh file)."""

    path: Path
    reused_tokens: int
    prompt: bytes | None = None
    source: _Entry | None = field(default=None, repr=False)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


class PromptCache:
    """Saved prompt states of one model, in ``directory / model_key``.

    Thread-safe: the engine calls it from worker threads. Sizes and recency are kept in
    memory per server process; run files carry the process id, so a server never removes
    another live server's files. While the directory is unusable (:attr:`fault`),
    :meth:`lease` returns None and nothing is read or written.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        model_identity: str,
        shape: KVShape,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self.max_bytes = max_bytes
        self.shape = shape
        self.model_identity = model_identity
        self.state_dir = StateDir(
            directory, model_folder(model_identity), recheck_seconds=recheck_seconds
        )
        self.directory = self.state_dir.path
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self.state_dir.open()  # StateDirRefused for an unsafe directory
        self._ready()

    # -- inventory -----------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(entry.size for entry in self._entries.values())

    @property
    def fault(self) -> str | None:
        """Why reuse is off now (the directory is unusable), or None."""
        return self.state_dir.fault

    def __len__(self) -> int:
        return len(self._entries)

    def saved_tokens(self) -> list[tuple[int, ...]]:
        with self._lock:
            return [entry.tokens for entry in self._entries.values()]

    def _ready(self) -> bool:
        """Whether the directory is usable; reads its contents again if it is another
        directory than the one last read."""
        if not self.state_dir.usable():
            return False
        with self._lock:
            if self._generation == self.state_dir.generation:
                return True
            self._entries.clear()
            try:
                self._load()
            except OSError as exc:
                self._failed(exc)
                return False
            self._generation = self.state_dir.generation
            return True

    def _failed(self, exc: OSError) -> None:
        self.state_dir.failed(f"{self.directory}: {exc.strerror or exc}")

    def _load(self) -> None:
        """Adopt states left by an earlier run of this server, if they check out.
        Called with the lock held."""
        self.state_dir.remove_leftovers()
        for index_path in self.directory.glob(f"*{_INDEX_SUFFIX}"):
            if index_path.name.startswith(RUN_PREFIX):  # another live server's, in progress
                continue
            state_path = index_path.with_suffix(_STATE_SUFFIX)
            entry = self._read_index(index_path, state_path)
            if entry is None:
                logger.info("prompt cache: ignoring %s (does not check out)", index_path.name)
                _unlink(index_path)
                _unlink(state_path)
                continue
            self._entries[tokens_key(entry.tokens)] = entry
        for state_path in self.directory.glob(f"*{_STATE_SUFFIX}"):
            if not state_path.with_suffix(_INDEX_SUFFIX).exists():
                _unlink(state_path)
        self._evict()

    def _read_index(self, index_path: Path, state_path: Path) -> _Entry | None:
        """The entry an index file records, if it and its state's header and size check
        out (the digest is checked when the state is used: reading every state at
        startup would cost as much as using them all)."""
        try:
            record = json.loads(index_path.read_text())
            tokens = tuple(int(token) for token in record["tokens"])
            sha256 = str(record["sha256"])
            if record["model"] != self.model_identity or not _SHA256_HEX.match(sha256):
                return None
            size = state_path.stat().st_size
            if size != record["size"]:
                return None
            for path in (index_path, state_path):  # files of older versions were 0644
                if path.stat().st_mode & 0o077:
                    os.chmod(path, FILE_MODE, follow_symlinks=False)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not tokens or kv_file_positions(state_path, self.shape) != len(tokens):
            return None
        if index_path.stem != tokens_key(tokens):
            return None
        return _Entry(tokens, state_path, size, float(record.get("used", 0)), sha256)

    # -- lookups -------------------------------------------------------------------------

    def _best(self, tokens: Sequence[int]) -> tuple[_Entry | None, int]:
        """The saved state sharing the longest token prefix with ``tokens``, and its length
        (ties: the shortest file, the cheapest to copy)."""
        best: _Entry | None = None
        best_length = 0
        for entry in self._entries.values():
            length = _common_prefix(entry.tokens, tokens)
            if length > best_length or (
                length == best_length and best is not None and entry.size < best.size
            ):
                best, best_length = entry, length
        return (best, best_length) if best_length else (None, 0)

    def has(self, tokens: Sequence[int]) -> bool:
        """Whether exactly ``tokens`` are saved (and, if so, mark them recently used)."""
        with self._lock:
            entry = self._entries.get(tokens_key(tokens))
            if entry is None or entry.tokens != tuple(tokens):
                return False
            entry.last_used = time.time()
            return True

    # -- runs ----------------------------------------------------------------------------

    def _new_run_file(self) -> Path | None:
        """A new private, empty file for a run (PicoLM's ``fopen(.., "wb")`` keeps its
        0600 mode), or None when the directory is unusable."""
        if not self._ready():
            return None
        path = self.directory / f"{RUN_PREFIX}{os.getpid()}-{uuid.uuid4().hex}{_STATE_SUFFIX}"
        try:
            create_private_file(path)
        except OSError as exc:
            self._failed(exc)
            return None
        return path

    def _pin(self, tokens: Sequence[int]) -> tuple[_Entry | None, int]:
        with self._lock:
            entry, length = self._best(tokens)
            if entry is not None:
                entry.pins += 1
                entry.last_used = time.time()
            return entry, length

    def _unpin(self, entry: _Entry) -> None:
        with self._lock:
            entry.pins -= 1

    def _drop(self, entry: _Entry) -> None:
        """Forget a state and delete its files (unless it was replaced meanwhile)."""
        with self._lock:
            key = tokens_key(entry.tokens)
            if self._entries.get(key) is entry:
                del self._entries[key]
                _unlink(entry.state_path.with_suffix(_INDEX_SUFFIX))
                _unlink(entry.state_path)

    def _copy(self, entry: _Entry, target: Path, positions: int) -> bool:
        """Seed ``target`` with ``positions`` of a saved state, checked against its digest.
        False when the state is bad (it is then deleted) or gone; OSError when the
        directory is at fault."""
        try:
            copy_kv_prefix(entry.state_path, target, self.shape, positions, sha256=entry.sha256)
        except StateCorrupted as exc:
            logger.warning("prompt cache: a saved state failed its check and is deleted: %s", exc)
        except ValueError as exc:
            logger.info("prompt cache: a saved state does not check out and is deleted: %s", exc)
        except FileNotFoundError:
            if not self.state_dir.usable():
                raise
            logger.info("prompt cache: a saved state is gone: %s", entry.state_path.name)
        else:
            return True
        self._drop(entry)
        return False

    def lease(
        self, tokens: Sequence[int], craft: Callable[[int], bytes | None] | None = None
    ) -> CacheLease | None:
        """A private KV file for a run on ``tokens``, or None when reuse is off (the
        directory is unusable: run without ``--cache``).

        With ``craft`` (positions -> prompt bytes or None: PicoLM's off-by-one needs a
        crafted prompt, see :mod:`.crafted_prompt`), the file is seeded with as many
        positions of the best saved state as a crafted prompt can be found for, from a
        state that passes its digest check; without it, or when none checks out, the
        file is empty (PicoLM then computes the whole prompt, and saves it).
        """
        path = self._new_run_file()
        if path is None:
            return None
        if craft is None:
            return CacheLease(path, 0)
        try:
            for _ in range(_MAX_SOURCES):
                entry, length = self._pin(tokens)
                if entry is None:
                    break
                try:
                    positions, prompt = self._cut_point(entry, length, len(tokens), craft)
                    if prompt is None:
                        break
                    if self._copy(entry, path, positions):
                        return CacheLease(path, positions, prompt, entry)
                finally:
                    self._unpin(entry)
                # The copy left garbage behind: start again from an empty file.
                os.truncate(path, 0)
        except OSError as exc:
            self._failed(exc)
            self.discard(CacheLease(path, 0))
            return None
        return CacheLease(path, 0)

    @staticmethod
    def _cut_point(
        entry: _Entry, length: int, n_tokens: int, craft: Callable[[int], bytes | None]
    ) -> tuple[int, bytes | None]:
        top = min(length, n_tokens - 1)
        for positions in range(top, max(top - _MAX_CUT_TRIES, 1), -1):
            prompt = craft(positions)
            if prompt is not None:
                return positions, prompt
        logger.debug("prompt cache: no verifiable cut point below %d positions", top)
        return 0, None

    def save_prefix(self, tokens: Sequence[int]) -> bool:
        """Save ``tokens`` as an entry of its own, cut from a longer saved state that
        starts with them (no engine run needed). False when none does."""
        with self._lock:
            entry, length = self._best(tokens)
        if entry is None or length < len(tokens):
            return False
        path = self._new_run_file()
        if path is None:
            return False
        lease = CacheLease(path, len(tokens))
        entry, length = self._pin(tokens)
        try:
            if entry is None or length < len(tokens) or not self._copy(entry, path, len(tokens)):
                self.discard(lease)
                return False
        except OSError as exc:
            self._failed(exc)
            self.discard(lease)
            return False
        finally:
            if entry is not None:
                self._unpin(entry)
        return self.commit(lease, tokens)

    def commit(self, lease: CacheLease, tokens: Sequence[int]) -> bool:
        """Keep the file of a run that exited cleanly as the saved state of ``tokens``.

        PicoLM writes the whole prompt's state at the end of a clean run, and says
        nothing when that fails: a file that does not hold exactly ``tokens`` is not kept,
        and the directory is checked at once (a full disk turns reuse off).
        """
        if not tokens or kv_file_positions(lease.path, self.shape) != len(tokens):
            self.discard(lease)
            if tokens:
                logger.info("prompt cache: a run's state was not written in full; not kept")
                self.state_dir.recheck()
            return False
        try:
            sha256 = file_sha256(lease.path)
        except OSError as exc:
            self._failed(exc)
            self.discard(lease)
            return False
        key = tokens_key(tokens)
        state_path = self.directory / f"{key}{_STATE_SUFFIX}"
        index_path = self.directory / f"{key}{_INDEX_SUFFIX}"
        index_tmp = self.directory / f"{RUN_PREFIX}{os.getpid()}-{uuid.uuid4().hex}.json"
        now = time.time()
        with self._lock:
            old = self._entries.get(key)
            if old is not None and old.pins:
                # Someone is copying the old file (the same state): keep it, drop ours.
                old.last_used = now
                self.discard(lease)
                return False
            try:
                os.replace(lease.path, state_path)
                size = state_path.stat().st_size
                record = {
                    "model": self.model_identity,
                    "tokens": list(tokens),
                    "used": now,
                    "size": size,
                    "sha256": sha256,
                }
                write_private_file(index_tmp, json.dumps(record).encode())
                os.replace(index_tmp, index_path)
            except OSError as exc:
                self._entries.pop(key, None)
                for path in (lease.path, index_tmp, state_path, index_path):
                    _unlink(path)
                self._failed(exc)
                return False
            self._entries[key] = _Entry(tuple(tokens), state_path, size, now, sha256)
            self._evict()
        return True

    def discard(self, lease: CacheLease) -> None:
        """Delete a run's file; never raises."""
        try:
            lease.path.unlink(missing_ok=True)
        except OSError as exc:
            self._failed(exc)

    def _evict(self) -> None:
        """Drop least recently used states until the budget holds (pinned ones stay).
        Called with the lock held."""
        entries = self._entries
        for key in over_budget(
            ((key, e.size, e.last_used, not e.pins) for key, e in entries.items()), self.max_bytes
        ):
            entry = entries.pop(key)
            _unlink(entry.state_path.with_suffix(_INDEX_SUFFIX))
            _unlink(entry.state_path)
