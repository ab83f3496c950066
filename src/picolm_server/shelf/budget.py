"""The memory budget of loaded models, in bytes: ``shelf.max_loaded_memory``, or with
``auto`` a share of the memory available when the server starts.

The share is three quarters (:data:`AUTO_SHARE`) of what the kernel calls available
(``MemAvailable``: free memory plus the page cache it can drop), or of the room left
under the container's memory limit when that is smaller. The quarter kept back is for
what the budget does not count and what a model's estimate misses before its first
load is measured: the server process itself, llama.cpp's compute buffers, the page
cache that keeps a PicoLM model's file warm between its processes, and the other
programs of a small machine. On an 8 GB Raspberry Pi with about 7 GiB available that is
about 5.3 GiB: TinyLlama 1.1B Q4 (about 0.7 GiB), SmolLM2 and a 3B code model together,
with about 1.8 GiB to spare. Machines with swap can load past it
(``shelf.allow_over_budget``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..config.settings import AUTO_MEMORY_BUDGET, ConfigError, ShelfSection

AUTO_SHARE = 0.75
# cgroup v1 writes "no limit" as a number near 2**63.
_NO_LIMIT = 1 << 60
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available(meminfo: Path) -> int | None:
    try:
        lines = meminfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, rest = line.partition(":")
        if name == "MemAvailable":
            fields = rest.split()
            if fields and fields[0].isdigit():
                return int(fields[0]) * 1024  # kB
    return None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _cgroup_dirs(proc_cgroup: Path, root: Path) -> list[tuple[Path, str, str, str]]:
    """Where this process's memory limit may be read: (directory, limit file, usage
    file, reclaimable key in memory.stat), its own cgroup first, then the mount's root
    (what a container sees as its own)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    dirs: list[tuple[Path, str, str, str]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2
            for base in (root / path.lstrip("/"), root):
                dirs.append((base, "memory.max", "memory.current", "inactive_file"))
        elif "memory" in controllers.split(","):  # cgroup v1
            v1 = root / "memory"
            for base in (v1 / path.lstrip("/"), v1):
                dirs.append(
                    (base, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
                )
    return dirs


def cgroup_room(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = _CGROUP_ROOT
) -> int | None:
    """Bytes left under this process's cgroup memory limit (the page cache it could drop
    counted as room), or None when there is no limit."""
    for base, limit_file, usage_file, reclaimable in _cgroup_dirs(proc_cgroup, root):
        limit = _read_int(base / limit_file)
        usage = _read_int(base / usage_file)
        if limit is None or usage is None or limit >= _NO_LIMIT:
            continue
        usage -= min(usage, _stat_value(base / "memory.stat", reclaimable))
        return max(0, limit - usage)
    return None


def available_memory(
    meminfo: Path = Path("/proc/meminfo"), room: Callable[[], int | None] = cgroup_room
) -> int | None:
    """Memory this process could take now: the smaller of the kernel's available memory
    and the room under its cgroup's limit; None when neither can be read."""
    figures = [figure for figure in (_meminfo_available(meminfo), room()) if figure is not None]
    if not figures:
        try:
            figures = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):
            return None
    return min(figures)


def memory_budget(
    shelf: ShelfSection, available: Callable[[], int | None] = available_memory
) -> int:
    """The budget in bytes: the configured size, or ``auto``'s share of the memory
    available now."""
    if shelf.max_loaded_memory != AUTO_MEMORY_BUDGET:
        return shelf.max_loaded_memory
    free = available()
    if free is None:
        raise ConfigError(
            "shelf.max_loaded_memory: auto, but this machine's available memory cannot be "
            'read: give a size, such as "4GiB"'
        )
    return int(free * AUTO_SHARE)


def resident_memory(statm: Path = Path("/proc/self/statm")) -> int | None:
    """This process's resident memory in bytes (what a load adds to it is the model's
    cost), or None where ``/proc`` cannot tell."""
    try:
        pages = int(statm.read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
