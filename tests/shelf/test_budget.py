"""The memory budget: a configured size, or auto's share of the memory available (the
kernel's figure, or the room under a cgroup limit when that is smaller)."""

from __future__ import annotations

from pathlib import Path

import pytest

from picolm_server.config.settings import ConfigError, ShelfSection
from picolm_server.shelf.budget import (
    AUTO_SHARE,
    available_memory,
    cgroup_room,
    memory_budget,
)

GIB = 1024**3


def test_a_configured_size_is_the_budget() -> None:
    assert memory_budget(ShelfSection(max_loaded_memory=6 * GIB), lambda: 1) == 6 * GIB


def test_auto_is_a_share_of_the_available_memory() -> None:
    assert AUTO_SHARE == 0.75
    assert memory_budget(ShelfSection(), lambda: 8 * GIB) == 6 * GIB
    with pytest.raises(ConfigError, match=r"shelf\.max_loaded_memory"):
        memory_budget(ShelfSection(), lambda: None)


def test_the_available_memory_of_this_machine() -> None:
    available = available_memory()
    assert available is not None and available > 0
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(next(line for line in meminfo.splitlines() if line.startswith("MemTotal"))
                   .split()[1])  # fmt: skip
    assert available <= total_kb * 1024


def test_meminfo_is_read_in_kilobytes(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000000 kB\nMemFree:  100 kB\nMemAvailable:  6000000 kB\n")
    assert available_memory(meminfo, lambda: None) == 6000000 * 1024
    assert available_memory(meminfo, lambda: GIB) == GIB  # a container's limit, smaller
    assert available_memory(meminfo, lambda: 100 * GIB) == 6000000 * 1024


def cgroup_tree(tmp_path: Path, version: int, limit: str, usage: int, inactive: int) -> Path:
    """A cgroup mount as a container sees it, and a /proc/self/cgroup pointing into it."""
    root = tmp_path / "cgroup"
    if version == 2:
        base = root / "app"
        base.mkdir(parents=True)
        (base / "memory.max").write_text(f"{limit}\n")
        (base / "memory.current").write_text(f"{usage}\n")
        (base / "memory.stat").write_text(f"anon 5\ninactive_file {inactive}\nactive_file 9\n")
        (tmp_path / "self").write_text("0::/app\n")
    else:
        base = root / "memory"  # the container's own cgroup, at the mount's root
        base.mkdir(parents=True)
        (base / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (base / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (base / "memory.stat").write_text(f"cache 1\ntotal_inactive_file {inactive}\n")
        (tmp_path / "self").write_text("4:memory:/docker/abc\n1:cpu:/docker/abc\n")
    return root


@pytest.mark.parametrize("version", [1, 2])
def test_the_room_under_a_cgroup_limit(tmp_path: Path, version: int) -> None:
    root = cgroup_tree(tmp_path, version, str(2 * GIB), usage=GIB, inactive=GIB // 4)
    # The limit, less what is used, counting the file cache it could drop as room.
    assert cgroup_room(tmp_path / "self", root) == 2 * GIB - (GIB - GIB // 4)


@pytest.mark.parametrize(("version", "limit"), [(1, str(2**63 - 4096)), (2, "max")])
def test_no_cgroup_limit(tmp_path: Path, version: int, limit: str) -> None:
    root = cgroup_tree(tmp_path, version, limit, usage=GIB, inactive=0)
    assert cgroup_room(tmp_path / "self", root) is None


def test_no_cgroup_at_all(tmp_path: Path) -> None:
    assert cgroup_room(tmp_path / "absent", tmp_path) is None
