"""The ASGI application: routes, the handlers that answer errors (in the envelope of
the request's API, http/errors.py) and the middleware that guards them (request id and
log, CORS, gzip, API key, body size)."""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..api.models import router as models_router
from ..api.registry import ROUTERS
from ..api.responses.store import ResponseStore
from ..config.settings import ServerSection
from ..errors import (
    APIError,
    AuthenticationError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTooLargeError,
)
from ..generation import GenerationCore
from ..http.affinity import SESSION_HEADER
from ..http.errors import error_response
from ..http.limits import BodyDeadlineMiddleware
from ..http.manners import (
    HeadAsGetMiddleware,
    SSEPingMiddleware,
    UnexpectedErrorMiddleware,
    allow_header,
    api_key_header,
    bearer_token,
)
from ..http.requests import ClientDisconnected
from ..http.shutdown import DrainMiddleware
from ..observability.metrics import ServerMetrics, ShelfMetrics
from ..observability.metrics import router as metrics_router
from ..observability.request_log import (
    REQUEST_ID_HEADER,
    SCHEMA_SOURCE_HEADER,
    RequestLogMiddleware,
)
from .footprint import IdleTrimMiddleware
from .health import router as health_router
from .ui import CHAT_PAGE_PATH
from .ui import router as ui_router

logger = logging.getLogger("picolm_server")

OPEN_PATHS = frozenset({"/health"})
# Responses smaller than this are not worth compressing.
GZIP_MINIMUM_BYTES = 1024


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
                await error_response(self._too_large(), scope)(scope, receive, send)
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
    """API key check for every path but the open ones, in constant time: the key as a
    Bearer token (OpenAI's clients) or in ``x-api-key`` (Anthropic's)."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Iterable[str] = OPEN_PATHS) -> None:
        self.app = app
        self.expected = api_key.encode()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        supplied = [
            key
            for key in (bearer_token(scope["headers"]), api_key_header(scope["headers"]))
            if key is not None
        ]
        if not any(hmac.compare_digest(key, self.expected) for key in supplied):
            message = (
                "Incorrect API key provided."
                if supplied
                else "You didn't provide an API key. Provide it in the Authorization header "
                "as a Bearer token (Authorization: Bearer YOUR_KEY) or in the x-api-key "
                "header."
            )
            await error_response(AuthenticationError(message), scope)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _api_error(request: Request, exc: APIError) -> Response:
    return error_response(exc, request.scope)


async def _client_gone(_: Request, __: ClientDisconnected) -> Response:
    # Nobody reads this; 499 is the conventional log entry for "client closed".
    return Response(status_code=499)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        error: APIError = NotFoundError(f"Invalid URL ({where})", code="unknown_url")
    elif exc.status_code == 405:
        error = MethodNotAllowedError(
            f"Method not allowed ({where})", headers=allow_header(exc.headers)
        )
    else:
        error = APIError(str(exc.detail))
        error.status_code = exc.status_code
    return error_response(error, request.scope)


def create_app(
    core: GenerationCore,
    *,
    api_key: str = "",
    max_body: int = 4 * 1024 * 1024,
    log_requests: bool = True,
    body_timeout: float = 60.0,
    engine_name: str = "",
    cors_origins: Sequence[str] = (),
    metrics_public: bool = False,
    ui: bool = True,
    sse_ping_seconds: float = 10.0,
    response_store: ResponseStore | None = None,
    shelf_metrics: ShelfMetrics | None = None,
    server_settings: ServerSection | None = None,
) -> Starlette:
    """The app; ``server_settings`` gives what the routes read of the ``server:``
    section (model administration: ``model_admin``, ``pull_allow``, ``pull_reserve``;
    default: the defaults with ``api_key``)."""
    # Plain Starlette routes (http/route_table.py): FastAPI would add nothing the
    # handlers use.
    routes = [
        *health_router.routes,
        *models_router.routes,
        *(route for api_routes in ROUTERS for route in api_routes.routes),
        *metrics_router.routes,
        *(ui_router.routes if ui else []),
    ]
    # Each handler gets only the exceptions of its class (Starlette types them loosely).
    exception_handlers: dict[Any, Any] = {
        APIError: _api_error,
        ClientDisconnected: _client_gone,
        StarletteHTTPException: _http_error,
    }

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        core.models.start()
        try:
            yield
        finally:
            # Unloading saves what models keep across a restart (llama.cpp's prompt
            # states) and ends their threads before the process exits.
            await core.models.aclose()

    app = Starlette(routes=routes, exception_handlers=exception_handlers, lifespan=lifespan)
    # A path with a stray slash is a 404 like any unknown path: Starlette's redirect to
    # the path without it builds its Location from the client's Host header.
    app.router.redirect_slashes = False
    app.state.core = core
    app.state.server_settings = server_settings or ServerSection(api_key=api_key)
    # Opened on first use: an app that never serves /v1/responses makes no file.
    store = app.state.response_store = response_store or ResponseStore(None)
    app.state.metrics = ServerMetrics(
        engine_name or "unknown",
        core.models,
        lambda: store.status == "ok",
        shelf=shelf_metrics,
    )
    open_paths = set(OPEN_PATHS)
    if metrics_public:
        open_paths.add("/metrics")
    if ui:
        open_paths.add(CHAT_PAGE_PATH)  # the page itself asks for the key
    # add_middleware wraps outside-in: the last added runs first.
    if api_key:
        app.add_middleware(AuthMiddleware, api_key=api_key, open_paths=open_paths)
    app.add_middleware(BodyLimitMiddleware, max_body=max_body)
    app.add_middleware(BodyDeadlineMiddleware, seconds=body_timeout)
    app.add_middleware(DrainMiddleware, drain=core.drain)
    app.add_middleware(UnexpectedErrorMiddleware)
    # Never a stream: SSE and Ollama's NDJSON lines go out as they are written.
    app.add_middleware(
        GZipMiddleware,
        minimum_size=GZIP_MINIMUM_BYTES,
        exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/x-ndjson"),
    )
    app.add_middleware(SSEPingMiddleware, interval=sse_ping_seconds)
    if cors_origins:
        # Outside the key check: a preflight carries no key and is answered here.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "HEAD", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=[
                REQUEST_ID_HEADER.decode(),
                SCHEMA_SOURCE_HEADER.decode(),
                SESSION_HEADER,
                "Retry-After",
                "x-should-retry",
            ],
            max_age=600,
        )
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(IdleTrimMiddleware)
    app.add_middleware(
        RequestLogMiddleware,
        metrics=app.state.metrics,
        log_requests=log_requests,
        routes=routes,
    )
    return app
