"""Admission control: a fixed number of jobs at once and a bounded FIFO queue.

On a small machine one generation already uses every core, so by default one runs at a
time and the rest wait in arrival order. When the queue is full a request is refused at
once (429 with ``Retry-After``) rather than left to time out; a request whose client
goes away while it waits is cancelled, which takes it out of the queue.

The generation core keeps two: one for generations, and one for the tokenizer work that
requests ask for outside a generation (``/tokenize``, counting tokens), whose CPU and
memory grow with the text and so must be bounded the same way.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..errors import QueueFullError


class Scheduler:
    def __init__(self, max_concurrent: int, max_queue: int, what: str = "generation") -> None:
        self.max_concurrent = max_concurrent
        self.what = what  # what a slot runs, for the 429's message
        self.max_queue = max_queue
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Mean duration of recent generations, for an honest Retry-After.
        self._mean_seconds = 5.0

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def retry_after_seconds(self) -> int:
        ahead = self.queued + self.running
        return max(1, math.ceil(self._mean_seconds * ahead / self.max_concurrent))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one generation slot for the duration of the ``async with`` block."""
        await self._acquire()
        started = time.monotonic()
        try:
            yield
        finally:
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.monotonic() - started)
            self._release()

    async def _acquire(self) -> None:
        if self.running < self.max_concurrent and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.max_queue:
            seconds = self.retry_after_seconds()
            raise QueueFullError(
                f"The server is busy: {self.running} {self.what}(s) running and "
                f"{len(self._waiters)} waiting. Retry after {seconds} s.",
                headers={"Retry-After": str(seconds)},
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as this request was cancelled: pass it on.
                self._release()
            else:
                self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        # Hand the slot straight to the oldest live waiter so nobody can jump the queue.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1
