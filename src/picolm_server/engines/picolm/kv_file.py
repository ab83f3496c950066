"""PicoLM's KV state file (``--cache FILE``): its layout, whether a file is whole, and
copies of its first positions.

The file is a 16-byte header (magic "KVCP", positions, layers, K/V row width), then K for
every layer and position, then V likewise, as fp16 rows. PicoLM neither checks that a
file belongs to the prompt it is given nor says when writing one fails, so a file is
trusted only when its header matches the model and its size is exactly what the header
says (:func:`kv_file_positions`), and its bytes match a recorded SHA-256 when it is
reused (:func:`copy_kv_prefix`).
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..state_dir import CLOEXEC, FILE_MODE, NOFOLLOW

KV_MAGIC = 0x4B564350  # "KVCP", PicoLM's KVCACHE_MAGIC
_HEADER = struct.Struct("<4I")
_COPY_CHUNK = 1 << 20


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


def _held_positions(header: bytes, size: int, shape: KVShape) -> int | None:
    if len(header) != _HEADER.size:
        return None
    magic, positions, layers, kv_dim = _HEADER.unpack(header)
    if magic != KV_MAGIC or layers != shape.layers or kv_dim != shape.kv_dim:
        return None
    if size != shape.file_size(positions):
        return None
    return int(positions)


def _open_for_reading(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_RDONLY | NOFOLLOW | CLOEXEC), "rb")


def kv_file_positions(path: Path, shape: KVShape) -> int | None:
    """The number of positions a KV file holds, or None if it is not a whole, matching file."""
    try:
        with _open_for_reading(path) as handle:
            header = handle.read(_HEADER.size)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return None
    return _held_positions(header, size, shape)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks (hex)."""
    digest = hashlib.sha256()
    with _open_for_reading(path) as handle:
        while chunk := handle.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class StateCorrupted(ValueError):
    """A saved state's bytes are not the bytes recorded with it."""


def copy_kv_prefix(
    source: Path, target: Path, shape: KVShape, positions: int, *, sha256: str | None = None
) -> None:
    """Write to ``target`` the state of the first ``positions`` positions of ``source``.

    The file is the header, then one block per layer of K rows, then one per layer of V
    rows; each block is cut to its first ``positions`` rows. With ``sha256`` the whole of
    ``source`` is read (in one pass with the copy) and must have that digest, or
    StateCorrupted is raised and ``target`` holds garbage. Raises OSError/ValueError.
    """
    with _open_for_reading(source) as src:
        header = src.read(_HEADER.size)
        held = _held_positions(header, os.fstat(src.fileno()).st_size, shape)
        if held is None or not 0 < positions <= held:
            raise ValueError(f"{source} does not hold {positions} positions")
        digest = hashlib.sha256(header) if sha256 is not None else None
        block, keep = held * shape.row_bytes, positions * shape.row_bytes
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW | CLOEXEC
        with os.fdopen(os.open(target, flags, FILE_MODE), "wb") as dst:
            dst.write(_HEADER.pack(KV_MAGIC, positions, shape.layers, shape.kv_dim))
            for index in range(2 * shape.layers):
                if sha256 is None:
                    src.seek(_HEADER.size + index * block)
                remaining, wanted = (block if sha256 is not None else keep), keep
                while remaining:
                    data = src.read(min(remaining, _COPY_CHUNK))
                    if not data:
                        raise ValueError(f"{source} is truncated")
                    if digest is not None:
                        digest.update(data)
                    if wanted:
                        dst.write(data[:wanted])
                        wanted -= min(wanted, len(data))
                    remaining -= len(data)
    if digest is not None and digest.hexdigest() != sha256:
        raise StateCorrupted(f"{source.name} does not match its recorded SHA-256")
