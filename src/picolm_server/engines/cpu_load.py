"""Whether other work wants this machine's cores, for the llama.cpp decode loop's choice
of threads.

llama.cpp (built with OpenMP) splits each decode across its threads, which meet at a
barrier after every operation, hundreds of times per token, and wait there spinning.
When other processes keep the cores busy, a thread that loses its core holds every
other thread at the next barrier until it gets a core back: a 64-token reply that takes
under a second took 40 to 70 seconds beside two busy processes on a 2-core machine. One
thread has no barriers and only its own share of a core to wait for. So the loop decodes
with no more threads than the cores other work leaves free (one at least).

The reading is the kernel's count of runnable threads (``/proc/loadavg``), smoothed over
steps. The loop's own threads account for up to two of them (the decoding thread and a
llama.cpp worker still spinning after the last decode).
"""

from __future__ import annotations

import os

LOADAVG = "/proc/loadavg"
OWN_RUNNABLE = 2
SMOOTHING = 0.3


class CpuLoad:
    def __init__(self, cores: int | None = None, path: str = LOADAVG) -> None:
        self.cores = cores or os.cpu_count() or 1
        self._path = path
        self._runnable = 0.0
        self.available = os.path.exists(path)

    def runnable(self) -> int | None:
        """Runnable threads on the machine now, or None where that cannot be read."""
        try:
            with open(self._path, encoding="ascii") as file:
                field = file.read().split()[3]
            return int(field.split("/")[0])
        except (OSError, IndexError, ValueError):
            return None

    def free_cores(self) -> int:
        """Cores that other work leaves free (at least one): the cores less the other
        runnable threads, smoothed."""
        if not self.available:
            return self.cores
        now = self.runnable()
        if now is None:
            self.available = False
            return self.cores
        self._runnable += SMOOTHING * (now - self._runnable)
        others = max(0.0, self._runnable - OWN_RUNNABLE)
        return max(1, self.cores - round(others))
