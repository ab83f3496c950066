"""The decode loop's reading of how many cores other work leaves free: the machine's
busy CPU time less this process's own, from /proc files written here."""

from __future__ import annotations

from pathlib import Path

import pytest

from picolm_server.engines.llama_cpp import cpu_load
from picolm_server.engines.llama_cpp.cpu_load import CpuLoad


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def write(tmp_path: Path, machine_busy: int, own: int, steal: int = 0) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    (tmp_path / "stat").write_text(
        f"cpu  {machine_busy} 0 0 5000 7 0 0 {steal} 0 0\ncpu0 1 2 3 4\n", encoding="ascii"
    )
    (tmp_path / "self").write_text(
        f"42 (picolm server) S 1 2 3 4 5 6 7 8 9 10 {own} 0 0 0\n", encoding="ascii"
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(cpu_load.time, "monotonic", fake.monotonic)
    return fake


def reading(tmp_path: Path, clock: Clock, steps: list[tuple[int, int]]) -> list[int]:
    load = CpuLoad(cores=2, proc_stat=str(tmp_path / "stat"), self_stat=str(tmp_path / "self"))
    load._ticks_per_second = 100
    free = []
    for machine, own in steps:
        write(tmp_path, machine, own)
        free.append(load.free_cores())
        clock.now += 1.0  # 100 ticks per core
    return free


def test_only_this_process_busy_leaves_every_core(tmp_path: Path, clock: Clock) -> None:
    # This process used both cores fully; nothing else ran.
    assert reading(tmp_path, clock, [(0, 0), (200, 200), (400, 400)]) == [2, 2, 2]


def test_a_little_other_work_takes_no_core(tmp_path: Path, clock: Clock) -> None:
    assert reading(tmp_path, clock, [(0, 0), (130, 100), (260, 200)]) == [2, 2, 2]


def test_busy_processes_leave_one_core_at_least(tmp_path: Path, clock: Clock) -> None:
    # Others used a core, then two, then nothing again.
    steps = [(0, 0), (200, 100), (400, 100), (500, 200)]
    assert reading(tmp_path, clock, steps) == [2, 1, 1, 2]


def test_time_the_hypervisor_took_is_not_other_work(tmp_path: Path, clock: Clock) -> None:
    load = CpuLoad(cores=2, proc_stat=str(tmp_path / "stat"), self_stat=str(tmp_path / "self"))
    load._ticks_per_second = 100
    write(tmp_path, 0, 0)
    assert load.free_cores() == 2
    clock.now += 1.0
    # This process used one core; the hypervisor took the other.
    write(tmp_path, 100, 100, steal=100)
    assert load.free_cores() == 2
    clock.now += 1.0
    # Kernel work on behalf of others (system, irq, softirq) is other work.
    (tmp_path / "stat").write_text("cpu  200 0 60 5000 7 10 10 140 0 0\n", encoding="ascii")
    assert load.free_cores() == 1


def test_the_reading_is_kept_within_its_window(tmp_path: Path, clock: Clock) -> None:
    load = CpuLoad(cores=2, proc_stat=str(tmp_path / "stat"), self_stat=str(tmp_path / "self"))
    load._ticks_per_second = 100
    write(tmp_path, 0, 0)
    load.free_cores()
    clock.now += 1.0
    write(tmp_path, 200, 0)
    assert load.free_cores() == 1
    clock.now += 0.1
    write(tmp_path, 200, 200)  # not read yet: within the window
    assert load.free_cores() == 1


def test_unreadable_files_mean_every_core(tmp_path: Path) -> None:
    load = CpuLoad(cores=4, proc_stat=str(tmp_path / "missing"), self_stat=str(tmp_path / "x"))
    assert load.free_cores() == 4 and not load.available
