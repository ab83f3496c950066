"""Handing back the memory that the server used and no longer needs.

glibc's ``free`` keeps freed heap memory for later unless asked to give it back, so a
burst of large requests (a 3.8 MB body is parsed into several copies of itself; a reply
of thousands of vectors is built as Python objects) would leave the process hundreds of
MB larger than it was, for good: an audit saw idle memory ratchet from 362 MB to 2.3 GB.
Three things keep it from ratcheting:

- :func:`release_startup_memory`: once the core is built, ``malloc_trim(0)`` returns
  what reading the model's metadata and vocabulary, building the pydantic models and
  compiling the chat template left behind (about 2 MiB on a PicoLM server;
  docs/benchmarks.md). A full garbage collection before it found a few dozen objects,
  freed nothing measurable and cost 25 ms of CPU, so cycles are left to the collector.
- :func:`map_large_allocations`: blocks of 1 MiB and more are their own memory maps,
  unmapped when freed (glibc otherwise raises that threshold as large blocks are freed,
  and later ones then come from the heap, where they fragment it).
- :class:`IdleTrimMiddleware`: when the last request in flight ends, at most once a
  second, ``malloc_trim(0)`` runs in a worker thread (a few ms).
- An unloaded model hands its memory back itself: the llama.cpp engine's ``close``
  trims (:mod:`..heap`, the access to glibc that this module uses too).

Each is a no-op where the C library is not glibc (musl, macOS, Windows).
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from ..heap import glibc, trim_function

logger = logging.getLogger("picolm_server")

# mallopt's parameter for the size from which blocks are memory-mapped (malloc.h).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1024 * 1024


def release_startup_memory() -> None:
    """Return free heap memory to the system where libc can."""
    trim = trim_function()
    if trim is None:
        logger.debug("malloc_trim is not available: start-up memory stays with the process")
        return
    trim()


def map_large_allocations() -> None:
    """Blocks of :data:`MMAP_THRESHOLD_BYTES` and more are mapped on their own (module
    doc)."""
    libc = glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


class IdleTrimMiddleware:
    """Free heap memory goes back to the system when the server goes idle (module doc)."""

    def __init__(self, app: ASGIApp, interval: float = 1.0) -> None:
        self.app = app
        self.interval = interval
        self._trim = trim_function()
        self._in_flight = 0
        self._last = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._trim is None:
            await self.app(scope, receive, send)
            return
        self._in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._in_flight -= 1
            now = time.monotonic()
            if self._in_flight == 0 and now - self._last >= self.interval:
                self._last = now
                # Not awaited: the answer has gone, and nothing waits for the trim.
                asyncio.get_running_loop().run_in_executor(None, self._trim)
