"""The decode loop's reading of how many cores other work leaves free."""

from __future__ import annotations

from pathlib import Path

from picolm_server.engines.cpu_load import CpuLoad


def loadavg(path: Path, running: int) -> None:
    path.write_text(f"0.50 0.40 0.30 {running}/300 12345\n", encoding="ascii")


def test_an_idle_machine_leaves_every_core(tmp_path: Path) -> None:
    path = tmp_path / "loadavg"
    loadavg(path, 2)  # the loop's own two threads
    load = CpuLoad(cores=2, path=str(path))
    assert [load.free_cores() for _ in range(5)] == [2] * 5


def test_busy_processes_leave_one_core_at_least(tmp_path: Path) -> None:
    path = tmp_path / "loadavg"
    loadavg(path, 5)  # three others on two cores
    load = CpuLoad(cores=2, path=str(path))
    readings = [load.free_cores() for _ in range(10)]
    assert readings[-1] == 1 and min(readings) == 1
    loadavg(path, 2)
    readings = [load.free_cores() for _ in range(20)]
    assert readings[-1] == 2  # back once the smoothed count has come down


def test_an_unreadable_count_means_every_core(tmp_path: Path) -> None:
    load = CpuLoad(cores=4, path=str(tmp_path / "missing"))
    assert load.free_cores() == 4
    garbled = tmp_path / "garbled"
    garbled.write_text("nonsense", encoding="ascii")
    load = CpuLoad(cores=4, path=str(garbled))
    assert load.free_cores() == 4 and not load.available
