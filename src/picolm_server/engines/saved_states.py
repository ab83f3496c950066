"""What every engine's store of saved prompt states on disk does alike: the folder a
model's states go in, the file name of a state, and which states go when the store is
over its byte budget.

A model is known by its file's identity (resolved path, size, modification time in
nanoseconds): a model file replaced or edited is another model, whose states are never
mixed with the old one's. Each store keeps one model's states in a folder of its own
under the private state directory (:mod:`.state_dir`), named from that identity.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def file_identity(path: Path) -> str:
    """The identity of a model file: resolved path, size and ``mtime_ns``."""
    resolved = path.resolve()
    stat = resolved.stat()
    return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"


def model_folder(identity: str) -> str:
    """The name of the folder a model's states are kept in."""
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def tokens_key(tokens: Sequence[int]) -> str:
    """A file name stem for the state of exactly these token ids."""
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()[:32]


def over_budget(entries: Iterable[tuple[K, int, float, bool]], max_bytes: int) -> list[K]:
    """The keys to drop, least recently used first, until the total size holds in
    ``max_bytes``. Each entry is (key, size, last used, may be dropped): one that may not
    (in use) stays and still counts."""
    items = list(entries)
    total = sum(size for _, size, _, _ in items)
    dropped: list[K] = []
    for key, size, _, droppable in sorted(items, key=lambda item: item[2]):
        if total <= max_bytes:
            break
        if droppable:
            dropped.append(key)
            total -= size
    return dropped
