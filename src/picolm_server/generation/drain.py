"""Graceful shutdown: what SIGTERM or SIGINT does to the requests in flight.

When the signal arrives the server stops accepting connections and every request that
still reaches the application is refused with a 503 in the envelope of its API
(http/shutdown.py).
Generations already running (and requests already waiting for a slot) get
``server.shutdown_timeout`` seconds to finish; then each one still running is
interrupted where it waits for the engine and ends properly: a stream with an error
event and ``data: [DONE]``, a non-streamed request with a JSON 503. Interrupting a
generation closes its engine run, which kills its processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import uvicorn
from uvicorn.server import HANDLED_SIGNALS

from ..errors import APIError, ServerShuttingDownError

logger = logging.getLogger("picolm_server")


class Drain:
    """The shutdown state the server's requests share: draining, then expired."""

    def __init__(self) -> None:
        self.draining = False
        self.expired = False
        self._scopes: set[anyio.CancelScope] = set()

    def begin(self) -> None:
        """Refuse new requests from now on; running ones go on."""
        self.draining = True

    def expire(self) -> None:
        """The time to finish is over: interrupt every guarded wait, now and later."""
        self.draining = True
        self.expired = True
        for scope in list(self._scopes):
            scope.cancel()

    @contextmanager
    def guard(self, seconds: float | None = None) -> Iterator[None]:
        """Run a block that the end of the drain interrupts with
        :class:`ServerShuttingDownError`, and that running longer than ``seconds``, if
        given, interrupts with :class:`TimeoutError`.

        One cancel scope does both: the generation enters this once per engine event,
        and each scope costs the event loop more than the token's own handling.
        The block must not span a ``yield`` of an async generator: a cancel scope belongs
        to the task that entered it.
        """
        scope = anyio.CancelScope()
        if seconds is not None:
            scope.deadline = anyio.current_time() + seconds
        with scope:
            if self.expired:
                scope.cancel()
            self._scopes.add(scope)
            try:
                yield
            finally:
                self._scopes.discard(scope)
        if scope.cancelled_caught:
            if self.expired:
                raise ServerShuttingDownError(
                    "The server is shutting down and stopped this request before it finished."
                )
            raise TimeoutError


def ends_stream_with_done(error: APIError) -> bool:
    """Whether a stream interrupted by ``error`` still ends with ``data: [DONE]``: the
    server stopping is not the generation failing, so the stream is closed as usual
    after its error event."""
    return isinstance(error, ServerShuttingDownError)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the drain started when a stop signal arrives, the running
    generations ended after ``drain_seconds``, and exit status 0 for a stop asked for
    by a signal (uvicorn would re-raise the signal, and the process die of it)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_seconds = drain_seconds

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain.begin()
        logger.info("stopping: letting running requests finish (up to %g s)", self.drain_seconds)
        expiry = asyncio.get_running_loop().call_later(self.drain_seconds, self._expire)
        try:
            await super().shutdown(sockets)
        finally:
            expiry.cancel()

    def _expire(self) -> None:
        logger.warning("stopping: ending the requests still running")
        self.drain.expire()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals can only be handled on the main thread
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
