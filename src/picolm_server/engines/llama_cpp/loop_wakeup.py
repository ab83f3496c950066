"""Handing calls from the llama.cpp decode thread to an asyncio event loop without
giving the event loop the GIL in the middle of a step.

``loop.call_soon_threadsafe`` wakes the loop by writing to its self-pipe, and Python
releases the GIL around that write. The woken loop thread takes the GIL at once and
turns the token into a streamed chunk (a few hundred microseconds of Python), while the
decode thread, back from its write, waits for the GIL to start the next decode: on the
project's 2-core machine each streamed token cost 0.6 ms of waiting, 7 % of a token's
time. Here the wake-up byte is written through ``ctypes.PyDLL``, which keeps the GIL:
the loop thread wakes, waits for the GIL, and gets it when the decode thread enters
``llama_decode`` (which releases it for the whole decode), so the chunk is made while
the next token is computed.

Where that cannot be set up (no ``write`` in the process's symbols, or a loop without
``add_reader``, as Windows' proactor loop), calls go through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

Call = Callable[[Any], object]


def _write_keeping_the_gil() -> Callable[[int, bytes, int], int] | None:
    """libc's ``write`` called with the GIL held, or None where it is not found."""
    try:
        write = ctypes.PyDLL(None).write
    except (AttributeError, OSError, TypeError):
        return None
    write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    write.restype = ctypes.c_ssize_t
    result: Callable[[int, bytes, int], int] = write
    return result


_WRITE = _write_keeping_the_gil()


class LoopWakeup:
    """Calls handed to one event loop from other threads, in the order they were made.

    ``call(function, argument)`` may be made from any thread; ``function(argument)``
    then runs on the loop. Safe to call after ``close`` or after the loop has closed:
    the call is dropped, as ``call_soon_threadsafe`` on a closed loop would refuse it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the loop's selector holds this object, not the other way round.
        self._loop = weakref.ref(loop)
        self._pending: deque[tuple[Call, Any]] = deque()
        self._read_fd = self._write_fd = -1
        self._close_pipe: weakref.finalize[Any, Any] | None = None
        self._write = _WRITE
        if self._write is None:
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        try:
            loop.add_reader(read_fd, self._run_pending)
        except (NotImplementedError, RuntimeError):
            _close_fds(read_fd, write_fd)
            return
        self._read_fd, self._write_fd = read_fd, write_fd
        # A loop dropped without close() still gives its pipe back.
        self._close_pipe = weakref.finalize(loop, _close_fds, read_fd, write_fd)

    @property
    def keeps_the_gil(self) -> bool:
        """Whether calls wake the loop through the pipe (else ``call_soon_threadsafe``)."""
        return self._write_fd >= 0

    def call(self, function: Call, argument: Any) -> None:
        if self._write is None or self._write_fd < 0:
            loop = self._loop()
            # A request whose event loop has closed has nobody left to tell.
            if loop is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(function, argument)
            return
        self._pending.append((function, argument))
        # A full pipe (the loop far behind) refuses the byte: the loop is woken anyway.
        self._write(self._write_fd, b"\0", 1)

    def _run_pending(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self._read_fd, 4096)
        pending = self._pending
        while pending:
            function, argument = pending.popleft()
            function(argument)

    def close(self) -> None:
        """Stop watching the pipe and close it (from the loop's thread, or once the loop
        has stopped)."""
        if self._close_pipe is None:
            return
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._read_fd)
        self._read_fd = self._write_fd = -1
        self._close_pipe()
        self._close_pipe = None
        self._pending.clear()


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class LoopWakeups:
    """One :class:`LoopWakeup` per event loop, made on first use (an engine may serve
    requests from more than one loop, as tests do)."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWakeup] = (
            weakref.WeakKeyDictionary()
        )

    def of(self, loop: asyncio.AbstractEventLoop) -> LoopWakeup:
        """The loop's wakeup; call it from the loop's thread."""
        wakeup = self._by_loop.get(loop)
        if wakeup is None:
            wakeup = self._by_loop[loop] = LoopWakeup(loop)
        return wakeup

    def close(self) -> None:
        for wakeup in list(self._by_loop.values()):
            wakeup.close()
        self._by_loop.clear()
