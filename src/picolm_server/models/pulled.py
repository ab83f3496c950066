"""Which files of a models directory were pulled into it (``picolm-server pull`` and
``/api/pull``), and so may be deleted by ``/api/delete``.

A pull leaves a hidden marker beside the file it wrote, ``.NAME.gguf.pulled`` (a models
directory never reads hidden files as models): the URL it came from and the file's
identity (device, inode, size). A file counts as pulled only while the marker names
that very file: a file the user put in its place since, or a symbolic link of the same
name, is not the pulled one, and is never deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

MARKER_SUFFIX = ".pulled"


def marker_of(path: Path) -> Path:
    return path.with_name(f".{path.name}{MARKER_SUFFIX}")


def _identity(path: Path) -> dict[str, int] | None:
    """The file's device, inode and size; None for anything but a regular file (a link
    is not followed)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return {"device": info.st_dev, "inode": info.st_ino, "size": info.st_size}


def mark_pulled(path: Path, url: str) -> None:
    """Record that ``path`` was pulled from ``url`` (written whole, then renamed)."""
    identity = _identity(path)
    if identity is None:
        return
    marker = marker_of(path)
    partial = marker.with_name(marker.name + ".tmp")
    partial.write_text(json.dumps({"url": url, **identity}))
    os.replace(partial, marker)


def was_pulled(path: Path) -> bool:
    """Whether ``path`` is the file a pull wrote there."""
    try:
        recorded = json.loads(marker_of(path).read_text())
    except (OSError, ValueError):
        return False
    identity = _identity(path)
    if identity is None or not isinstance(recorded, dict):
        return False
    return all(recorded.get(key) == value for key, value in identity.items())


def remove_pulled(path: Path) -> None:
    """Delete a pulled file and its marker (the file first: a marker left alone names
    nothing)."""
    path.unlink()
    with contextlib.suppress(FileNotFoundError):
        marker_of(path).unlink()
