"""How a download shows its progress: a bar on a terminal (tqdm: percent, MB/s, time
left, on stderr), plain lines otherwise (a build log, a pipe: on stdout, one every few
seconds, so that stderr holds nothing but an error)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, NoReturn, TextIO

from .download import Progress, size_text

if TYPE_CHECKING:
    from tqdm import tqdm

# Plain lines: at most one per this many seconds (and one at the end).
LINE_SECONDS = 5.0


def progress_for(terminal: TextIO = sys.stderr, lines: TextIO = sys.stdout) -> Progress:
    return BarProgress(terminal) if terminal.isatty() else LineProgress(lines)


class BarProgress:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bar: tqdm[NoReturn] | None = None

    def start(self, name: str, total: int | None, done: int) -> None:
        from tqdm import tqdm  # only a download on a terminal needs it

        self._bar = tqdm(
            desc=name,
            total=total,
            initial=done,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self._stream,
            dynamic_ncols=True,
        )

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class LineProgress:
    def __init__(self, stream: TextIO, every: float = LINE_SECONDS) -> None:
        self._stream = stream
        self._every = every
        self._name = ""
        self._total: int | None = None
        self._done = self._started_at = 0
        self._started = self._last = 0.0

    def start(self, name: str, total: int | None, done: int) -> None:
        self._name, self._total, self._done, self._started_at = name, total, done, done
        self._started = self._last = time.monotonic()
        resumed = f", resuming at {size_text(done)}" if done else ""
        whole = size_text(total) if total is not None else "size unknown"
        self._write(f"{name}: downloading ({whole}{resumed})")

    def advance(self, count: int) -> None:
        self._done += count
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._write(self._line(now))

    def finish(self) -> None:
        self._write(self._line(time.monotonic()))

    def _line(self, now: float) -> str:
        seconds = max(now - self._started, 1e-6)
        rate = (self._done - self._started_at) / seconds
        text = f"{self._name}: {size_text(self._done)}"
        if self._total:
            text += f" of {size_text(self._total)} ({100 * self._done / self._total:.0f}%)"
        text += f", {rate / 1e6:.1f} MB/s"
        if self._total and rate > 0 and self._done < self._total:
            text += f", {(self._total - self._done) / rate:.0f} s left"
        return text

    def _write(self, line: str) -> None:
        print(line, file=self._stream, flush=True)
