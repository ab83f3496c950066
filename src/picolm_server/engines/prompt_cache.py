"""Saved prompt state for PicoLM (``--cache FILE``), kept on disk and reused safely.

PicoLM loads a KV file without checking that it belongs to the prompt it is given, and
overwrites the file at the end of a run. So this store:

- keys every saved state by the exact token ids it was computed from, and hands a state
  to a run only for positions whose tokens are exactly the run's first tokens (a longer
  state is cut down to the common prefix: the KV file format allows it);
- gives every run its own copy (a failed or cancelled run can never damage a good state,
  and two runs never share a file), and adopts the run's file only after a clean exit
  whose KV header and size say it holds exactly the prompt's positions;
- records the model's identity beside each state and keeps each model in a folder of its
  own, so states of another model, or files that do not check out (wrong header or size,
  changed since they were recorded), are never used;
- keeps the total size under a budget, evicting the least recently used states.

PicoLM's reuse is off by one (see :func:`craft_prompt`): a run that starts from a saved
state of P positions must be given a prompt text crafted for it, not the true prompt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .picolm_tokenizer import PicoLMTokenizer

logger = logging.getLogger("picolm_server.prompt_cache")

KV_MAGIC = 0x4B564350  # "KVCP", PicoLM's KVCACHE_MAGIC
_HEADER = struct.Struct("<4I")
_STATE_SUFFIX = ".kv"
_INDEX_SUFFIX = ".json"
_RUN_PREFIX = ".run-"
_COPY_CHUNK = 1 << 20
# Reuse fewer positions than a saved state holds only this far back looking for a cut
# point whose crafted prompt checks out.
_MAX_CUT_TRIES = 24
_BYTE_TOKEN = re.compile(rb"^<0x([0-9A-Fa-f]{2})>$")
# Filler bytes for the positions PicoLM never feeds: byte-fallback tokens that merge with
# nothing ("<0x01>" + anything is no vocabulary entry).
_FILLER = b"\x01"
_SPACE_MARKER = "\u2581".encode()


@dataclass(frozen=True)
class KVShape:
    """What a PicoLM KV file's size depends on: layers and the K/V row width."""

    layers: int
    kv_dim: int

    @property
    def row_bytes(self) -> int:
        return self.kv_dim * 2

    def file_size(self, positions: int) -> int:
        # Header, then K for every layer and position, then V likewise, as fp16.
        return _HEADER.size + 2 * self.layers * positions * self.row_bytes


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


def copy_kv_prefix(source: Path, target: Path, shape: KVShape, positions: int) -> None:
    """Write to ``target`` the state of the first ``positions`` positions of ``source``.

    The file is the header, then one block per layer of K rows, then one per layer of V
    rows; each block is cut to its first ``positions`` rows. Raises OSError/ValueError.
    """
    held = kv_file_positions(source, shape)
    if held is None or not 0 < positions <= held:
        raise ValueError(f"{source} does not hold {positions} positions")
    block, keep = held * shape.row_bytes, positions * shape.row_bytes
    with source.open("rb") as src, target.open("wb") as dst:
        dst.write(_HEADER.pack(KV_MAGIC, positions, shape.layers, shape.kv_dim))
        for index in range(2 * shape.layers):
            src.seek(_HEADER.size + index * block)
            remaining = keep
            while remaining:
                data = src.read(min(remaining, _COPY_CHUNK))
                if not data:
                    raise ValueError(f"{source} is truncated")
                dst.write(data)
                remaining -= len(data)


# ---- the off-by-one, and the prompt that corrects it -------------------------------------


def token_text(tokenizer: PicoLMTokenizer, token_ids: Sequence[int]) -> bytes:
    """Prompt bytes that spell ``token_ids`` (byte-fallback tokens as their raw byte)."""
    parts = []
    for token_id in token_ids:
        piece = tokenizer.piece_bytes(token_id)
        match = _BYTE_TOKEN.match(piece)
        parts.append(bytes([int(match.group(1), 16)]) if match else piece)
    # PicoLM turns every space into "▁" before it tokenizes, so a space is the same
    # input; spaces keep the prompt readable (and a stand-in's directives intact).
    return b"".join(parts).replace(_SPACE_MARKER, b" ")


def craft_prompt(tokenizer: PicoLMTokenizer, tokens: Sequence[int], positions: int) -> bytes | None:
    """A prompt that makes PicoLM, loaded with the true state of ``tokens[:positions]``,
    compute exactly the state of ``tokens`` (and the same reply), or None.

    With a cache of P positions PicoLM's first forward pass is ``forward(c[P-1], pos=P)``
    where ``c`` is the tokenization of the prompt it is given, ``c[P]`` is never fed, and
    positions after P get ``c[P+1:]``. So ``c`` must have ``len(tokens)`` tokens, with
    ``c[P-1] == tokens[P]`` and ``c[P+1:] == tokens[P+1:]``; ``c[1:P-1]`` and ``c[P]``
    are filler. Every candidate is checked with the exact tokenizer.
    """
    n = len(tokens)
    if not 2 <= positions <= n - 1:
        return None
    head = token_text(tokenizer, tokens[positions : positions + 1])
    tail = token_text(tokenizer, tokens[positions + 1 :])
    # PicoLM prepends "▁" (one token of its own before a filler byte).
    filler = max(positions - 3, 0)
    for _ in range(4):
        text = _FILLER * filler + head + _FILLER + tail
        if b"\0" in text:
            return None
        crafted = tokenizer.encode(text)
        if (
            len(crafted) == n
            and crafted[positions - 1] == tokens[positions]
            and crafted[positions + 1 :] == list(tokens[positions + 1 :])
        ):
            return text
        # Adjust the filler to where the fed token actually landed, and try again.
        try:
            landed = crafted.index(tokens[positions], 1)
        except ValueError:
            return None
        step = (positions - 1) - landed
        if step == 0 or filler + step < 0:
            return None
        filler += step
    return None


# ---- the store ---------------------------------------------------------------------------


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    state_path: Path
    size: int
    last_used: float
    pins: int = 0


@dataclass
class CacheLease:
    """One run's private KV file, how many prompt positions it already holds, and the
    prompt to give PicoLM for it (None: the true prompt, which is right for a fresh file)."""

    path: Path
    reused_tokens: int
    prompt: bytes | None = None
    source: _Entry | None = field(default=None, repr=False)


def _key(tokens: Sequence[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()[:32]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class PromptCache:
    """Saved prompt states of one model, in ``directory / model_key``.

    Thread-safe: the engine calls it from worker threads. Sizes and recency are kept in
    memory per server process; run files carry the process id, so a server never removes
    another live server's files.
    """

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
        with self._lock:
            return sum(entry.size for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def saved_tokens(self) -> list[tuple[int, ...]]:
        with self._lock:
            return [entry.tokens for entry in self._entries.values()]

    def _load(self) -> None:
        """Adopt states left by an earlier run of this server, if they check out."""
        for leftover in self.directory.glob(f"{_RUN_PREFIX}*"):
            match = re.match(rf"{re.escape(_RUN_PREFIX)}(\d+)-", leftover.name)
            if match is None or not _pid_alive(int(match.group(1))):
                leftover.unlink(missing_ok=True)
        for index_path in self.directory.glob(f"*{_INDEX_SUFFIX}"):
            state_path = index_path.with_suffix(_STATE_SUFFIX)
            entry = self._read_index(index_path, state_path)
            if entry is None:
                logger.info("prompt cache: ignoring %s (does not check out)", index_path.name)
                index_path.unlink(missing_ok=True)
                state_path.unlink(missing_ok=True)
                continue
            self._entries[_key(entry.tokens)] = entry
        for state_path in self.directory.glob(f"*{_STATE_SUFFIX}"):
            if not state_path.with_suffix(_INDEX_SUFFIX).exists():
                state_path.unlink(missing_ok=True)
        with self._lock:
            self._evict()

    def _read_index(self, index_path: Path, state_path: Path) -> _Entry | None:
        try:
            record = json.loads(index_path.read_text())
            tokens = tuple(int(token) for token in record["tokens"])
            if record["model"] != self.model_identity:
                return None
            stat = state_path.stat()
            if (stat.st_size, stat.st_mtime_ns) != (record["size"], record["mtime_ns"]):
                return None  # changed since it was recorded
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not tokens or kv_file_positions(state_path, self.shape) != len(tokens):
            return None
        if index_path.stem != _key(tokens):
            return None
        return _Entry(tokens, state_path, stat.st_size, float(record.get("used", 0)))

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
            entry = self._entries.get(_key(tokens))
            if entry is None or entry.tokens != tuple(tokens):
                return False
            entry.last_used = time.time()
            return True

    # -- runs ----------------------------------------------------------------------------

    def _run_path(self) -> Path:
        return self.directory / f"{_RUN_PREFIX}{os.getpid()}-{uuid.uuid4().hex}{_STATE_SUFFIX}"

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

    def lease(
        self, tokens: Sequence[int], craft: Callable[[int], bytes | None] | None = None
    ) -> CacheLease:
        """A private KV file for a run on ``tokens``.

        With ``craft`` (positions -> prompt bytes or None, see :func:`craft_prompt`), the
        file is seeded with as many positions of the best saved state as a crafted prompt
        can be found for; without it, or when none checks out, the file does not exist yet
        (PicoLM then computes the whole prompt, and saves it).
        """
        path = self._run_path()
        if craft is None:
            return CacheLease(path, 0)
        entry, length = self._pin(tokens)
        if entry is None:
            return CacheLease(path, 0)
        try:
            top = min(length, len(tokens) - 1)
            for positions in range(top, max(top - _MAX_CUT_TRIES, 1), -1):
                prompt = craft(positions)
                if prompt is None:
                    continue
                try:
                    copy_kv_prefix(entry.state_path, path, self.shape, positions)
                except (OSError, ValueError) as exc:
                    logger.warning("prompt cache: could not copy a saved state: %s", exc)
                    path.unlink(missing_ok=True)
                    return CacheLease(path, 0)
                return CacheLease(path, positions, prompt, entry)
            logger.debug("prompt cache: no verifiable cut point below %d positions", top)
            return CacheLease(path, 0)
        finally:
            self._unpin(entry)

    def save_prefix(self, tokens: Sequence[int]) -> bool:
        """Save ``tokens`` as an entry of its own, cut from a longer saved state that
        starts with them (no engine run needed). False when none does."""
        entry, length = self._pin(tokens)
        if entry is None:
            return False
        lease = CacheLease(self._run_path(), len(tokens))
        try:
            if length < len(tokens):
                return False
            copy_kv_prefix(entry.state_path, lease.path, self.shape, len(tokens))
        except (OSError, ValueError) as exc:
            logger.warning("prompt cache: could not cut a saved state: %s", exc)
            self.discard(lease)
            return False
        finally:
            self._unpin(entry)
        return self.commit(lease, tokens)

    def commit(self, lease: CacheLease, tokens: Sequence[int]) -> bool:
        """Keep a run's file as the saved state of ``tokens`` if it holds exactly them."""
        if not tokens or kv_file_positions(lease.path, self.shape) != len(tokens):
            self.discard(lease)
            return False
        key = _key(tokens)
        state_path = self.directory / f"{key}{_STATE_SUFFIX}"
        index_path = self.directory / f"{key}{_INDEX_SUFFIX}"
        index_tmp = self.directory / f"{_RUN_PREFIX}{os.getpid()}-{uuid.uuid4().hex}.json"
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
                stat = state_path.stat()
                record = {
                    "model": self.model_identity,
                    "tokens": list(tokens),
                    "used": now,
                    "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns,
                }
                index_tmp.write_text(json.dumps(record))
                os.replace(index_tmp, index_path)
            except OSError as exc:
                logger.warning("prompt cache: could not save a state: %s", exc)
                self._entries.pop(key, None)
                for path in (lease.path, index_tmp, state_path, index_path):
                    path.unlink(missing_ok=True)
                return False
            self._entries[key] = _Entry(tuple(tokens), state_path, stat.st_size, now)
            self._evict()
        return True

    @staticmethod
    def discard(lease: CacheLease) -> None:
        lease.path.unlink(missing_ok=True)

    def _evict(self) -> None:
        """Drop least recently used states until the budget holds (pinned ones stay).
        Called with the lock held."""
        total = sum(entry.size for entry in self._entries.values())
        for key, entry in sorted(self._entries.items(), key=lambda item: item[1].last_used):
            if total <= self.max_bytes:
                break
            if entry.pins:
                continue
            del self._entries[key]
            total -= entry.size
            with contextlib.suppress(OSError):
                entry.state_path.with_suffix(_INDEX_SUFFIX).unlink()
            with contextlib.suppress(OSError):
                entry.state_path.unlink()
