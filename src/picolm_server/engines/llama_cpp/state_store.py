"""Saved prompt states of one llama.cpp model on disk, so that they outlive the engine:
written when the engine closes (its model unloaded, the server stopping), found again by
the next engine of the same model file, in this process or a later one.

A file holds one state: a header, the token ids, then the sequence's state exactly as
``llama_state_seq_get_data`` gave it (the KV cells with their positions, per layer K
and V with their types). That is all a restore needs: the decode loop always computes
a prompt's last token again (its logits start the reply), so no logits are saved, and
the position to go on from is the token count.

The header says what the file is for, and a file that does not check out is removed,
never used:

- magic and format version;
- a digest of the model's identity (resolved path, size, ``mtime_ns``) with the
  llama.cpp version and whether flash attention was on (a state computed another way
  would restore, but give other last bits than a fresh computation);
- the token count and the state's length: the file's size must be exactly what they
  say (a truncated file);
- a SHA-256 of the token ids and the state, checked when the state is read (a damaged
  file).

Opening reads every file's header and token ids, what matching a prompt needs; a
state's bytes are read (and checked) only when a prompt picks it. Reading them all at
open would cost the load time and resident memory of every state, for the few a
conversation comes back to (measured in ``bench/llama_state_restore.py``).

The files stay under ``max_bytes``, least recently used dropped first (a file's
modification time is its last use). Writing at close goes most recent first, skips a
state a file already holds (a swap and back writes nothing new), and stops at
``save_seconds``: closing is bounded in time whatever the budget. The folder is
private and this user's own (:mod:`..state_dir`); while it is unusable nothing is read
or written.

Not thread-safe: the decode loop's thread uses it, then the thread that closes the
engine, after the loop has stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..saved_states import model_folder, over_budget, tokens_key
from ..state_dir import CLOEXEC, NOFOLLOW, RECHECK_SECONDS, RUN_PREFIX, StateDir, write_private_file
from .state_cache import Tokens, common_prefix

logger = logging.getLogger("picolm_server.prompt_cache")

MAGIC = b"PLSLLAMA"
FORMAT_VERSION = 1
# magic, format version, identity digest, token count, state length, SHA-256 of both.
_HEADER = struct.Struct("<8sI32sIQ32s")
SUFFIX = ".llstate"
# Writing at close stops after this long (what is not written is recomputed later).
SAVE_SECONDS = 5.0


class _Damaged(ValueError):
    """A file that does not check out (the message says how, for the log)."""


@dataclass
class StoredState:
    """One state on disk: the tokens it holds, its file, its size and last use (ns)."""

    tokens: Tokens
    path: Path
    size: int
    used: int


def state_identity(model_identity: str, compatibility: str) -> bytes:
    """The digest a file's header carries: the model and how its states are computed."""
    return hashlib.sha256(f"{model_identity}\n{compatibility}".encode()).digest()


def _digest(tokens: bytes, data: bytes) -> bytes:
    digest = hashlib.sha256(tokens)
    digest.update(data)
    return digest.digest()


def encode_header(identity: bytes, tokens: Tokens, data: bytes) -> bytes:
    token_bytes = tokens.astype("<i4").tobytes()
    return _HEADER.pack(
        MAGIC, FORMAT_VERSION, identity, len(tokens), len(data), _digest(token_bytes, data)
    )


class StateStore:
    """The saved states of one model in ``directory / model_folder(model_identity)``.

    ``compatibility`` names what else a state depends on (the llama.cpp version, flash
    attention); ``max_tokens`` is the longest state a slot can take. Raises
    :class:`~..state_dir.StateDirRefused` when the directory is unsafe.
    """

    def __init__(
        self,
        directory: Path,
        *,
        model_identity: str,
        compatibility: str,
        max_bytes: int,
        max_tokens: int,
        save_seconds: float = SAVE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_tokens = max_tokens
        self.save_seconds = save_seconds
        self._clock = clock
        self._identity = state_identity(model_identity, compatibility)
        self.state_dir = StateDir(
            directory, model_folder(model_identity), recheck_seconds=recheck_seconds
        )
        self.directory = self.state_dir.path
        self._entries: dict[str, StoredState] = {}
        self._generation = 0
        self.state_dir.open()
        self._ready()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self._entries.values())

    @property
    def fault(self) -> str | None:
        """Why the store is off now (its directory is unusable), or None."""
        return self.state_dir.fault

    def stored_tokens(self) -> list[Tokens]:
        return [entry.tokens for entry in self._entries.values()]

    # -- the folder's contents -----------------------------------------------------------

    def _ready(self) -> bool:
        """Whether the folder is usable; reads its files again when it is another folder
        than the one last read."""
        if not self.state_dir.usable():
            return False
        if self._generation == self.state_dir.generation:
            return True
        self._entries.clear()
        try:
            self.state_dir.remove_leftovers()
            for path in self.directory.glob(f"*{SUFFIX}"):
                if not path.name.startswith(RUN_PREFIX):  # being written
                    self._adopt(path)
        except OSError as exc:
            self._failed(exc)
            return False
        self._generation = self.state_dir.generation
        self._evict()
        return True

    def _failed(self, exc: OSError) -> None:
        self.state_dir.failed(f"{self.directory}: {exc.strerror or exc}")

    def _adopt(self, path: Path) -> None:
        """Index a file left by an earlier engine if its header, size and name check out;
        remove it otherwise."""
        try:
            with _open(path) as handle:
                header = handle.read(_HEADER.size)
                size = os.fstat(handle.fileno()).st_size
                count, _, _ = self._check_header(header, size)
                tokens = _read_tokens(handle, count)
                used = os.fstat(handle.fileno()).st_mtime_ns
            if path.name != f"{tokens_key(tokens.tolist())}{SUFFIX}":
                raise _Damaged("its name is not its tokens'")
        except (_Damaged, OSError) as exc:  # OSError: a symbolic link, say
            logger.info("prompt states: removing %s (%s)", path.name, exc)
            _unlink(path)
            return
        self._entries[path.stem] = StoredState(tokens, path, size, used)

    def _check_header(self, header: bytes, size: int) -> tuple[int, int, bytes]:
        """The token count, state length and digest a header gives, if it is a header
        of this model's, whole file."""
        if len(header) != _HEADER.size:
            raise _Damaged("shorter than a header")
        magic, version, identity, count, length, digest = _HEADER.unpack(header)
        if magic != MAGIC or version != FORMAT_VERSION:
            raise _Damaged("not a state file of this format")
        if identity != self._identity:
            raise _Damaged("of another model, or of another llama.cpp or its settings")
        if not 2 <= count <= self.max_tokens:
            raise _Damaged(f"{count} tokens, not within 2 to {self.max_tokens}")
        if size != _HEADER.size + 4 * count + length:
            raise _Damaged(f"{size} bytes, not the {_HEADER.size + 4 * count + length} it says")
        return int(count), int(length), bytes(digest)

    # -- lookups -------------------------------------------------------------------------

    def best_match(self, tokens: Tokens) -> tuple[StoredState | None, int]:
        """The stored state sharing the longest prefix with ``tokens``, and its length."""
        best: StoredState | None = None
        best_length = 0
        for entry in self._entries.values():
            length = common_prefix(entry.tokens, tokens)
            if length > best_length:
                best, best_length = entry, length
        return best, best_length

    def _holding(self, tokens: Tokens) -> StoredState | None:
        """A stored state that holds ``tokens`` (exactly, or as its first tokens)."""
        for entry in self._entries.values():
            if len(entry.tokens) >= len(tokens) and common_prefix(entry.tokens, tokens) == len(
                tokens
            ):
                return entry
        return None

    def read(self, entry: StoredState) -> bytes | None:
        """The state's bytes, checked against its header's digest. None when it does not
        check out (the file is then removed) or cannot be read now."""
        if not self._ready() or self._entries.get(entry.path.stem) is not entry:
            return None
        try:
            with _open(entry.path) as handle:
                header = handle.read(_HEADER.size)
                count, length, digest = self._check_header(
                    header, os.fstat(handle.fileno()).st_size
                )
                token_bytes = handle.read(4 * count)
                data = handle.read(length)
            if len(data) != length or _digest(token_bytes, data) != digest:
                raise _Damaged("its bytes are not the bytes it was saved with")
            if not np.array_equal(np.frombuffer(token_bytes, "<i4"), entry.tokens):
                raise _Damaged("it holds other tokens than when it was found")
        except _Damaged as exc:
            logger.warning(
                "prompt states: %s does not check out and is removed (%s)", entry.path.name, exc
            )
            self._drop(entry)
            return None
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and self.state_dir.usable():
                self._entries.pop(entry.path.stem, None)  # removed by someone else
            else:
                self._failed(exc)
            return None
        self._touch(entry, time.time_ns())
        return data

    # -- writing -------------------------------------------------------------------------

    def save(self, states: Iterable[tuple[Tokens, Callable[[], bytes]]]) -> int:
        """Write states, most recently used first: (tokens, a function that gives the
        state's bytes, called only for a state written). Returns how many were written.
        Stops at ``save_seconds``, at the budget, or when the folder fails."""
        if not self._ready():
            return 0
        deadline = self._clock() + self.save_seconds
        now = time.time_ns()
        written = fresh_bytes = 0
        for rank, (tokens, state_of) in enumerate(states):
            used = now - rank  # an earlier one is the more recent
            if not 2 <= len(tokens) <= self.max_tokens:
                continue
            held = self._holding(tokens)
            if held is not None:
                self._touch(held, used)
                continue
            if self._clock() >= deadline:
                logger.info("prompt states: saving stopped after %g s", self.save_seconds)
                break
            data = state_of()
            size = _HEADER.size + 4 * len(tokens) + len(data)
            if fresh_bytes + size > self.max_bytes:
                continue  # older than what is written, it would be dropped at once
            try:
                self._write(tokens, data, used)
            except OSError as exc:
                self._failed(exc)
                break
            written += 1
            fresh_bytes += size
        self._evict()
        return written

    def _write(self, tokens: Tokens, data: bytes, used: int) -> None:
        key = tokens_key(tokens.tolist())
        path = self.directory / f"{key}{SUFFIX}"
        progress = self.directory / f"{RUN_PREFIX}{os.getpid()}-{uuid.uuid4().hex}{SUFFIX}"
        try:
            write_private_file(
                progress,
                encode_header(self._identity, tokens, data),
                tokens.astype("<i4").tobytes(),
                data,
            )
            os.utime(progress, ns=(used, used))
            os.replace(progress, path)
        finally:
            _unlink(progress)
        # States it makes needless: those its tokens begin with.
        for old in [
            entry
            for entry in self._entries.values()
            if len(entry.tokens) < len(tokens)
            and common_prefix(entry.tokens, tokens) == len(entry.tokens)
        ]:
            self._drop(old)
        self._entries[key] = StoredState(tokens.copy(), path, path.stat().st_size, used)

    def _touch(self, entry: StoredState, used: int) -> None:
        if used <= entry.used:
            return
        entry.used = used
        with contextlib.suppress(OSError):
            os.utime(entry.path, ns=(used, used), follow_symlinks=False)

    def _drop(self, entry: StoredState) -> None:
        if self._entries.get(entry.path.stem) is entry:
            del self._entries[entry.path.stem]
        _unlink(entry.path)

    def _evict(self) -> None:
        for key in over_budget(
            ((key, e.size, e.used, True) for key, e in self._entries.items()), self.max_bytes
        ):
            _unlink(self._entries.pop(key).path)


def _open(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_RDONLY | NOFOLLOW | CLOEXEC), "rb")


def _read_tokens(handle: BinaryIO, count: int) -> Tokens:
    raw = handle.read(4 * count)
    if len(raw) != 4 * count:
        raise _Damaged("truncated")
    return np.frombuffer(raw, "<i4").astype(np.int32)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
