"""The decode loop's reading of how many cores other work leaves free: the machine's
busy CPU time less this process's own, from /proc files written here."""

from __future__ import annotations

from pathlib import Path

import pytest

from picolm_server.engines.llama_cpp import cpu_load
from picolm_server.engines.llama_cpp.cpu_load import CpuLoad, ThreadChoice


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def write(
    tmp_path: Path, machine_busy: int, own: int, steal: int = 0, running: int | None = None
) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    text = f"cpu  {machine_busy} 0 0 5000 7 0 0 {steal} 0 0\ncpu0 1 2 3 4\nintr 1 2 3\n"
    if running is not None:
        text += f"ctxt 99\nprocs_running {running}\nprocs_blocked 0\n"
    (tmp_path / "stat").write_text(text, encoding="ascii")
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


class Machine:
    """/proc files and a clock: other work and this process use the cores as told."""

    def __init__(self, tmp_path: Path, clock: Clock) -> None:
        self.tmp_path, self.clock = tmp_path, clock
        self.machine = self.own = 0
        write(tmp_path, 0, 0)
        self.load = CpuLoad(
            cores=2, proc_stat=str(tmp_path / "stat"), self_stat=str(tmp_path / "self")
        )
        self.load._ticks_per_second = 100

    def run(self, seconds: float, others: float, own: float, running: int | None = None) -> None:
        """``seconds`` pass with other work using ``others`` cores, this process ``own``;
        then ``running`` tasks are runnable (this thread among them)."""
        self.clock.now += seconds
        self.own += round(own * seconds * 100)
        self.machine += round((others + own) * seconds * 100)
        write(self.tmp_path, self.machine, self.own, running=running)


def request_after_other_work(
    machine: Machine, others_now: float, running: int | None = None
) -> ThreadChoice:
    """A choice of two threads whose loop was idle while another server decoded on both
    cores for a quarter second; then, 0.05 s on (other work using ``others_now`` cores,
    ``running`` tasks runnable), a request makes the loop busy."""
    choice = ThreadChoice(2, machine.load)
    choice.idle()
    choice.refresh()
    machine.run(0.25, others=2.0, own=0.0)
    choice.refresh()
    machine.run(0.05, others=others_now, own=0.0, running=running)
    choice.busy(machine.clock.now)
    return choice


def test_work_seen_while_idle_lowers_the_threads_until_the_next_reading(
    tmp_path: Path, clock: Clock
) -> None:
    """Another server's reply ends as this one's request comes: the first reading of
    the request spans the other's last busy moments, and the next one, a tenth of a
    second later, gives both threads back. (No count of runnable tasks here: the
    reading decides alone.)"""
    machine = Machine(tmp_path, clock)
    choice = request_after_other_work(machine, others_now=0.0)
    assert choice.choose(clock.now) == 1
    machine.run(0.05, others=0.0, own=2.0)
    assert choice.choose(clock.now) == 1  # the reading is younger than its window
    machine.run(0.06, others=0.0, own=2.0)
    assert choice.choose(clock.now) == 2


def test_work_seen_while_idle_and_over_now_lowers_nothing(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, with the other server's tasks no longer runnable when the request
    comes: its prompt, one decode, gets both threads."""
    monkeypatch.setattr(cpu_load.time, "sleep", lambda seconds: None)
    machine = Machine(tmp_path, clock)
    choice = request_after_other_work(machine, others_now=0.0, running=1)  # only this thread
    assert choice.choose(clock.now) == 2


def test_work_seen_while_idle_and_still_running_lowers_the_threads(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu_load.time, "sleep", lambda seconds: None)
    machine = Machine(tmp_path, clock)
    # two spinning processes and this thread
    choice = request_after_other_work(machine, others_now=2.0, running=3)
    assert choice.choose(clock.now) == 1


def test_the_instant_count_is_the_fewest_of_its_samples(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task that runs for a moment (a client reading the stream) shows up in one
    sample and not the next: it takes no core."""
    samples = iter([3, 2, 3])

    def next_sample(seconds: float) -> None:
        write(tmp_path, 0, 0, running=next(samples))

    write(tmp_path, 0, 0, running=3)
    next(samples)
    monkeypatch.setattr(cpu_load.time, "sleep", next_sample)
    load = CpuLoad(cores=2, proc_stat=str(tmp_path / "stat"), self_stat=str(tmp_path / "self"))
    assert load.free_now() == 1  # 3, 2, 3 runnable: one other task in every sample
    write(tmp_path, 0, 0, running=1)
    monkeypatch.setattr(cpu_load.time, "sleep", lambda seconds: None)
    assert load.free_now() == 2
    write(tmp_path, 0, 0)  # no procs_running line: no answer (the reading stands)
    assert load.free_now() is None


def test_work_seen_while_decoding_keeps_the_threads_lowered_for_a_calm_second(
    tmp_path: Path, clock: Clock
) -> None:
    machine = Machine(tmp_path, clock)
    choice = ThreadChoice(2, machine.load)
    choice.busy(clock.now)
    assert choice.choose(clock.now) == 2
    machine.run(0.6, others=0.0, own=2.0)
    assert choice.choose(clock.now) == 2
    machine.run(0.3, others=1.0, own=1.0)  # other work takes a core mid-reply
    assert choice.choose(clock.now) == 1
    for _ in range(3):  # calm again, but not for a second yet
        machine.run(0.3, others=0.0, own=1.0)
        assert choice.choose(clock.now) == 1
    machine.run(0.3, others=0.0, own=1.0)
    assert choice.choose(clock.now) == 2


def test_steady_other_work_keeps_one_thread(tmp_path: Path, clock: Clock) -> None:
    """Cores kept busy elsewhere before and during the request: one thread throughout."""
    machine = Machine(tmp_path, clock)
    choice = ThreadChoice(2, machine.load)
    choice.idle()
    choice.refresh()
    machine.run(0.25, others=2.0, own=0.0)
    choice.refresh()
    choice.busy(clock.now)
    threads = []
    for _ in range(20):
        machine.run(0.1, others=1.5, own=0.5)
        threads.append(choice.choose(clock.now))
    assert threads == [1] * 20
