"""The shutdown drain as HTTP sees it: once the drain has begun (generation/drain.py),
every request that still reaches the application gets a 503, and its connection is
closed."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ServerShuttingDownError
from ..generation.drain import Drain
from .errors import error_response


class DrainMiddleware:
    """Once the drain has begun, every request that still arrives gets a 503."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.drain.draining:
            error = ServerShuttingDownError("The server is shutting down; retry later.")
            response = error_response(error, scope, {"Connection": "close"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
