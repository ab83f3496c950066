"""How many cores other work leaves free, for the llama.cpp decode loop's choice of
threads.

llama.cpp (built with OpenMP) splits each decode across its threads, which meet at a
barrier after every operation, hundreds of times per token, and wait there spinning.
When other processes keep the cores busy, a thread that loses its core holds every
other thread at the next barrier until it gets a core back: a 64-token reply that takes
under a second took 40 to 70 seconds beside two busy processes on a 2-core machine. One
thread has no barriers and only its own share of a core to wait for. So the loop decodes
with no more threads than the cores other work leaves free (one at least).

The reading is the CPU time the whole machine spent busy (``/proc/stat``: user, nice,
system, irq and softirq; not steal, nor the guest time that user already holds) less this
process's own (``/proc/self/stat``), over the last fraction of a second: the cores other
processes kept busy. (A count of runnable threads is no good: a client reading the
stream, or this server's own event loop, shows up in it for moments that cost nothing.)
Where those files cannot be read, every core is taken to be free. The decode loop asks
before every decode, and every :data:`WINDOW` while it is idle, so the reading a request
starts from is recent; :attr:`CpuLoad.since` says when the time a reading spans began,
so that the loop can tell what other work did while it was idle from what it does now.

A reading spans a fraction of a second; what runs at this instant is
:meth:`CpuLoad.free_now`, from the count of runnable tasks (``procs_running``), the
fewest of a few samples a millisecond apart: a task that runs in all of them keeps
running, a client or event loop that shows up for a moment does not.
"""

from __future__ import annotations

import os
import re
import time

PROC_STAT = "/proc/stat"
SELF_STAT = "/proc/self/stat"
# How often the reading is renewed (seconds); between readings the last one stands.
WINDOW = 0.25
# Other work using at least this share of a core takes that core.
CORE_TAKEN = 0.6
# Samples of the runnable tasks for :meth:`CpuLoad.free_now`, and the seconds between.
RUNNING_SAMPLES = 3
RUNNING_GAP = 0.001
_PROCS_RUNNING = re.compile(rb"^procs_running (\d+)$", re.MULTILINE)


class CpuLoad:
    def __init__(
        self, cores: int | None = None, proc_stat: str = PROC_STAT, self_stat: str = SELF_STAT
    ) -> None:
        self.cores = cores or os.cpu_count() or 1
        self._proc_stat = proc_stat
        self._self_stat = self_stat
        self._ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = True
        self._last: tuple[float, int, int] | None = None
        self._free = self.cores
        # When the time the current reading spans began (monotonic seconds).
        self.since = 0.0

    def _busy_ticks(self) -> tuple[int, int]:
        """(CPU ticks the machine spent busy, ticks this process spent), since boot."""
        with open(self._proc_stat, encoding="ascii") as file:
            fields = [int(v) for v in file.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: idle and iowait are not busy,
        # and steal is time the hypervisor gave another machine, not work on this one. It
        # comes in bursts (1-2 % of a benchmark case, all while this server decoded), and
        # counting it cut the decode to one thread for a second at a time.
        machine = sum(fields[:3]) + sum(fields[5:7])
        with open(self._self_stat, encoding="ascii") as file:
            # After the command name (in parentheses, which may hold spaces): utime is the
            # 12th field, stime the 13th.
            after_name = file.read().rsplit(")", 1)[1].split()
        own = int(after_name[11]) + int(after_name[12])
        return machine, own

    def free_cores(self, window: float = WINDOW) -> int:
        """Cores that other work leaves free (at least one), from a reading no older
        than ``window`` seconds."""
        if not self.available:
            return self.cores
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < window:
            return self._free
        try:
            machine, own = self._busy_ticks()
        except (OSError, IndexError, ValueError):
            self.available = False
            return self.cores
        if self._last is not None:
            then, machine_then, own_then = self._last
            seconds = (now - then) * self._ticks_per_second
            others = max(0, (machine - machine_then) - (own - own_then)) / seconds
            taken = int(others + 1 - CORE_TAKEN)
            self._free = max(1, self.cores - taken)
            self.since = then
        self._last = (now, machine, own)
        return self._free

    def free_now(self) -> int | None:
        """Cores that tasks runnable right now leave free (at least one): the fewest
        runnable tasks over :data:`RUNNING_SAMPLES` samples, less the asking thread.
        None where the count cannot be read."""
        if not self.available:
            return None
        counts = []
        for sample in range(RUNNING_SAMPLES):
            if sample:
                time.sleep(RUNNING_GAP)
            try:
                with open(self._proc_stat, "rb") as file:
                    found = _PROCS_RUNNING.search(file.read())
            except OSError:
                return None
            if found is None:
                return None
            counts.append(int(found.group(1)))
        others = min(counts) - 1  # the asking thread runs as it reads
        return max(1, self.cores - others)


# Seconds without contention before the decodes get more threads again, after contention
# seen while the loop was decoding.
RAISE_AFTER_SECONDS = 1.0
# Right after the loop turns from idle to busy, the reading is renewed this often
# (seconds), for FIRST_READINGS_SECONDS.
FIRST_WINDOW = 0.1
FIRST_READINGS_SECONDS = 0.5


class ThreadChoice:
    """How many threads each decode gets: no more than the cores other work leaves free,
    and more again only once that work is gone.

    Load comes and goes in bursts, so contention seen while the loop decodes keeps the
    threads lowered until a calm :data:`RAISE_AFTER_SECONDS`. A reading that began while
    the loop was idle is different: it tells what other work did then, not whether that
    goes on. Such as another server that has just finished its own reply, whose last
    busy moments the first reading of a request sees. What runs at this instant
    (:meth:`CpuLoad.free_now`) decides then; and whatever it says, such a reading lowers
    the threads only until the next reading, taken :data:`FIRST_WINDOW` later. Without
    the second, a request right after another server's ran its first second and more on
    one thread (107-110 tokens/s where two threads give 125); without the first, its
    prompt, which is one decode, ran on one thread: time to first token 0.36-0.45 s
    against 0.19-0.23 s alone (docs/benchmarks.md's alternating runs).
    """

    def __init__(self, threads: int, load: CpuLoad) -> None:
        self.threads = threads
        self.load = load
        self.current = threads
        self._contended_at = float("-inf")
        self._busy_since = float("inf")
        # (the reading's start, the cores free at the instant it was checked)
        self._instant: tuple[float, int | None] | None = None

    def idle(self) -> None:
        """The loop has nothing to decode."""
        self._busy_since = float("inf")

    def refresh(self) -> None:
        """Renew the reading (the loop keeps it fresh while idle)."""
        self.load.free_cores()

    def busy(self, now: float) -> None:
        """The loop has work (again): from ``now`` on, readings show contention."""
        if self._busy_since == float("inf"):
            self._busy_since = now

    def calm(self) -> bool:
        """Whether other work leaves every core this loop decodes with free."""
        return self.load.free_cores() >= self.threads

    def choose(self, now: float) -> int:
        """The threads for the decode about to run."""
        first = now - self._busy_since < FIRST_READINGS_SECONDS
        free = self.load.free_cores(FIRST_WINDOW if first else WINDOW)
        if free < self.threads and self.load.since < self._busy_since:
            # Once per reading: the samples take a few milliseconds.
            if self._instant is None or self._instant[0] != self.load.since:
                self._instant = (self.load.since, self.load.free_now())
            if self._instant[1] is not None:  # else the reading stands
                free = max(free, self._instant[1])
        threads = min(self.threads, free)
        if threads < self.current:
            if self.load.since >= self._busy_since:
                self._contended_at = now
        elif now - self._contended_at < RAISE_AFTER_SECONDS:
            threads = self.current
        self.current = threads
        return threads
