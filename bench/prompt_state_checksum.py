"""What checking saved prompt states costs: the SHA-256 written with each state and
checked before it is used.

For states of TinyLlama-1.1B's shape (22 layers, kv_dim 256: 22 KiB per position) of a
few sizes, it times, best of ``--repeat``:

- ``commit``: hashing a state PicoLM has just written (``file_sha256``), which the server
  does once per kept state;
- ``lease``: seeding a run's file from a saved state with the digest checked
  (``copy_kv_prefix(..., sha256=...)``: the whole file is read) and, for comparison,
  without it (only the rows copied are read), cutting one position off as a run does.

The files are in the page cache (as a state just written or recently used is); the
figures are CPU time (user + system, ``time.process_time``), so that other work on a
shared machine does not inflate them, not the disk's speed.

    .venv/bin/python bench/prompt_state_checksum.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from picolm_server.engines.picolm.kv_file import (
    KV_MAGIC,
    KVShape,
    copy_kv_prefix,
    file_sha256,
)

SHAPE = KVShape(layers=22, kv_dim=256)  # TinyLlama-1.1B
POSITIONS = (46, 465, 1862, 2048)  # ~1, 10, 40 MB, and a whole 2048-token context


def write_state(path: Path, positions: int) -> None:
    body = os.urandom(SHAPE.file_size(positions) - 16)
    header = KV_MAGIC.to_bytes(4, "little") + positions.to_bytes(4, "little")
    header += SHAPE.layers.to_bytes(4, "little") + SHAPE.kv_dim.to_bytes(4, "little")
    path.write_bytes(header + body)


def best(repeat: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.process_time()
        action()
        times.append(time.process_time() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| positions | state size | commit: SHA-256 | lease, checked | lease, unchecked |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "state.kv", Path(tmp) / "run.kv"
        for positions in POSITIONS:
            write_state(source, positions)
            digest = file_sha256(source)
            hashing = best(args.repeat, lambda: file_sha256(source))
            cut = positions - 1
            checked = best(
                args.repeat,
                lambda c=cut, d=digest: copy_kv_prefix(source, target, SHAPE, c, sha256=d),
            )
            unchecked = best(args.repeat, lambda c=cut: copy_kv_prefix(source, target, SHAPE, c))
            size = source.stat().st_size / 2**20
            print(
                f"| {positions} | {size:.1f} MiB | {hashing * 1000:.1f} ms "
                f"| {checked * 1000:.1f} ms | {unchecked * 1000:.1f} ms |"
            )


if __name__ == "__main__":
    main()
