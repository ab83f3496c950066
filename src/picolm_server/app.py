"""The ASGI application: routes, OpenAI-style error responses and the middleware that
guards them (API key, body size, request log)."""

from __future__ import annotations

import hmac
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .drain import DrainMiddleware
from .errors import (
    APIError,
    AuthenticationError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTooLargeError,
)
from .limits import BodyDeadlineMiddleware
from .routes import ClientDisconnected, router
from .serving import ChatService

logger = logging.getLogger("picolm_server")
access_logger = logging.getLogger("picolm_server.access")

OPEN_PATHS = frozenset({"/health"})


def error_response(error: APIError) -> Response:
    # ASCII JSON: a message quoting the request may hold any character.
    return Response(
        json.dumps(error.to_dict()),
        status_code=error.status_code,
        headers=error.headers,
        media_type="application/json",
    )


class BodyLimitMiddleware:
    """Refuse bodies over ``max_body`` bytes, by Content-Length or while they stream in."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"The request body is larger than the server's limit of {self.max_body} bytes."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await error_response(self._too_large())(scope, receive, send)
                return
        received = 0
        limit = self.max_body
        too_large = self._too_large

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large()
            return message

        await self.app(scope, limited_receive, send)


class AuthMiddleware:
    """Bearer-token check for every path but the open ones, in constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        supplied = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                supplied = value
        if not hmac.compare_digest(supplied, self.expected):
            message = (
                "Incorrect API key provided."
                if supplied
                else "You didn't provide an API key. Provide it in the Authorization header "
                "as a Bearer token (Authorization: Bearer YOUR_KEY)."
            )
            await error_response(AuthenticationError(message))(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _register_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> Response:
        return error_response(exc)

    @app.exception_handler(ClientDisconnected)
    async def client_gone(_: Request, __: ClientDisconnected) -> Response:
        # Nobody reads this; 499 is the conventional log entry for "client closed".
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            return error_response(NotFoundError(f"Invalid URL ({where})", code="unknown_url"))
        if exc.status_code == 405:
            return error_response(MethodNotAllowedError(f"Method not allowed ({where})"))
        error = APIError(str(exc.detail))
        error.status_code = exc.status_code
        return error_response(error)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        logger.exception("unexpected error while handling a request")
        return error_response(APIError(f"The server had an error: {type(exc).__name__}."))


def create_app(
    service: ChatService,
    *,
    api_key: str = "",
    max_body: int = 4 * 1024 * 1024,
    log_requests: bool = True,
    body_timeout: float = 60.0,
) -> FastAPI:
    app = FastAPI(
        title="picolm-server",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.chat_service = service
    app.include_router(router)
    _register_error_handlers(app)
    # add_middleware wraps outside-in: the last added runs first.
    if api_key:
        app.add_middleware(AuthMiddleware, api_key=api_key)
    app.add_middleware(BodyLimitMiddleware, max_body=max_body)
    app.add_middleware(BodyDeadlineMiddleware, seconds=body_timeout)
    app.add_middleware(DrainMiddleware, drain=service.drain)
    if log_requests:
        app.add_middleware(AccessLogMiddleware)
    return app


class AccessLogMiddleware:
    """One log line per request: method, path, status and time to the end of the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            access_logger.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                elapsed_ms,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed_ms, 1),
                },
            )
