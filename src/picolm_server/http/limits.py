"""Connection limits uvicorn does not have: a deadline for each request's headers, a cap
on open connections answered in the envelope of the request's API, and a deadline for
the body.

uvicorn closes a connection that stays idle after a response (``timeout_keep_alive``)
and bounds the size of the headers (``h11_max_incomplete_event_size``), but a client
that sends its headers a byte at a time holds a connection for ever, and its own
concurrency limit answers in text/plain. The protocol here is uvicorn's h11 protocol
with those two additions; the body deadline is ASGI middleware, since only the
application knows when it has read the body.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import RequestTimeoutError, TooManyConnectionsError
from .errors import error_response


async def too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    """The app a connection past the cap gets in place of the server's: a 503."""
    error = TooManyConnectionsError(
        "The server has too many open connections; retry later.", headers={"Retry-After": "1"}
    )
    await error_response(error, scope, {"Connection": "close"})(scope, receive, send)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap.

    The deadline runs from the moment the server waits for a request (a new connection,
    or the end of the previous response) until that request's headers are complete;
    a connection still waiting then is closed. A connection past the cap gets a 503 for
    each request it sends, and is closed after it.
    """

    header_timeout: float = 10.0
    max_connections: int = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.app = too_many_connections
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._waiting_for_headers():
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._waiting_for_headers():
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _waiting_for_headers(self) -> bool:
        # uvicorn makes a request/response cycle once a request's headers are complete.
        return self.cycle is None or self.cycle.response_complete

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn's ``http`` setting, with these limits."""
    return type(
        "ConfiguredH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )


class BodyDeadlineMiddleware:
    """A request's whole body must arrive within ``seconds`` of its headers; else 408."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.seconds
        body_complete = False
        seconds = self.seconds

        async def receive_in_time() -> Message:
            nonlocal body_complete
            if body_complete:
                # After the body, the only message left is the disconnect: no deadline.
                return await receive()
            try:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0.0)):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeoutError(
                    f"The request body did not arrive within {seconds:g} seconds."
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_complete = True
            return message

        await self.app(scope, receive_in_time, send)
