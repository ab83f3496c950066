"""PicoLM's KV state file: what makes a file whole and matching, and copies of its
first positions."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from picolm_server.engines.picolm.kv_file import (
    KV_MAGIC,
    KVShape,
    copy_kv_prefix,
    kv_file_positions,
)

SHAPE = KVShape(layers=2, kv_dim=4)


def write_kv(path: Path, fed: list[int], shape: KVShape = SHAPE) -> Path:
    """A KV file whose rows carry the token fed at their position (as the stand-in's)."""
    row = shape.row_bytes
    rows = b"".join(struct.pack("<I", t).ljust(row, b"\0") for t in fed)
    path.write_bytes(
        struct.pack("<4I", KV_MAGIC, len(fed), shape.layers, shape.kv_dim)
        + rows * (2 * shape.layers)
    )
    return path


def rows_of(path: Path, shape: KVShape = SHAPE) -> list[list[int]]:
    """Token ids of every block (K per layer, then V per layer) of a KV file."""
    data = path.read_bytes()
    n = struct.unpack_from("<4I", data)[1]
    row = shape.row_bytes
    return [
        [struct.unpack_from("<I", data, 16 + (b * n + p) * row)[0] for p in range(n)]
        for b in range(2 * shape.layers)
    ]


def test_kv_file_positions_checks_magic_shape_and_exact_size(tmp_path: Path) -> None:
    good = write_kv(tmp_path / "a.kv", [1, 2, 3])
    assert kv_file_positions(good, SHAPE) == 3
    assert kv_file_positions(good, KVShape(2, 8)) is None
    assert kv_file_positions(good, KVShape(3, 4)) is None
    (tmp_path / "short.kv").write_bytes(good.read_bytes()[:-1])
    assert kv_file_positions(tmp_path / "short.kv", SHAPE) is None
    (tmp_path / "long.kv").write_bytes(good.read_bytes() + b"\0")
    assert kv_file_positions(tmp_path / "long.kv", SHAPE) is None
    (tmp_path / "magic.kv").write_bytes(b"XXXX" + good.read_bytes()[4:])
    assert kv_file_positions(tmp_path / "magic.kv", SHAPE) is None
    assert kv_file_positions(tmp_path / "missing.kv", SHAPE) is None


def test_copy_kv_prefix_keeps_the_first_rows_of_every_block(tmp_path: Path) -> None:
    source = write_kv(tmp_path / "a.kv", [10, 11, 12, 13, 14])
    copy_kv_prefix(source, tmp_path / "b.kv", SHAPE, 3)
    assert kv_file_positions(tmp_path / "b.kv", SHAPE) == 3
    assert rows_of(tmp_path / "b.kv") == [[10, 11, 12]] * 4
    with pytest.raises(ValueError):
        copy_kv_prefix(source, tmp_path / "c.kv", SHAPE, 6)
