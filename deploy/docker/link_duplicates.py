"""Replace files with identical content under a directory by hard links to one copy.

Used in the image build: llama-cpp-python's wheel carries each shared library three
times (libllama.so, .so.0, .so.0.x; wheels cannot hold symbolic links) and once more
outside its package. An image layer stores hard-linked files once.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def link_duplicates(root: Path, min_size: int = 64 * 1024) -> int:
    first_by_content: dict[tuple[int, str], Path] = {}
    saved = 0
    for directory, _, names in os.walk(root):
        for name in sorted(names):
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            size = path.stat().st_size
            if size < min_size:
                continue
            key = (size, hashlib.sha256(path.read_bytes()).hexdigest())
            original = first_by_content.setdefault(key, path)
            if original != path:
                path.unlink()
                os.link(original, path)
                saved += size
    return saved


if __name__ == "__main__":
    saved = link_duplicates(Path(sys.argv[1]))
    print(f"hard-linked duplicate files: {saved / 2**20:.1f} MiB saved")
