"""Route tables for the HTTP layer: plain Starlette routes declared with decorators.

A route module makes a :class:`Routes` table and declares its handlers on it, as with
FastAPI's ``APIRouter``::

    routes = Routes()

    @routes.get("/v1/models/{model_id:path}")
    async def retrieve_model(request: Request, model_id: str) -> Response: ...

A handler takes the request and the path's parameters as keyword arguments, reads and
validates the body itself (with the pydantic models of ``protocol.py``) and returns a
response. This is all the routing the server needs; FastAPI's dependency injection and
OpenAPI generation would cost several MiB of memory and a good part of the start-up time
for nothing here (docs/benchmarks.md), so the server does not load FastAPI.

:class:`LazyRoutes` declares routes by path and the name of their handler in a module
that is imported with the first request to one of them: an API nobody calls costs
neither the memory of its request and response models nor their import time at start.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Handler = Callable[..., Awaitable[Response]]


class Routes:
    """The routes of one module, in declaration order, ready for the application."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, path: str, methods: list[str], handler: Handler) -> None:
        async def endpoint(request: Request) -> Response:
            return await handler(request, **request.path_params)

        endpoint.__name__ = handler.__name__
        endpoint.__qualname__ = handler.__qualname__
        self.routes.append(Route(path, endpoint, methods=methods, name=handler.__name__))

    def route(self, path: str, methods: list[str]) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(path, methods, handler)
            return handler

        return register

    def get(self, path: str) -> Callable[[Handler], Handler]:
        return self.route(path, ["GET"])

    def post(self, path: str) -> Callable[[Handler], Handler]:
        return self.route(path, ["POST"])

    def delete(self, path: str) -> Callable[[Handler], Handler]:
        return self.route(path, ["DELETE"])


class LazyRoutes:
    """Routes of one module, by path and handler name, for a module imported with the
    first request to any of them (its handlers declared on a :class:`Routes` there)."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.routes: list[Route] = []
        self._handlers: dict[str, Handler] = {}

    def _handler(self, name: str) -> Handler:
        handler = self._handlers.get(name)
        if handler is None:
            # On the event loop: a first import takes some tens of milliseconds, once,
            # and a thread would not make it cheaper (imports hold a lock).
            handler = getattr(importlib.import_module(self.module), name)
            self._handlers[name] = handler
        return handler

    def add(self, path: str, methods: list[str], name: str) -> None:
        async def endpoint(request: Request) -> Response:
            return await self._handler(name)(request, **request.path_params)

        endpoint.__name__ = endpoint.__qualname__ = name
        self.routes.append(Route(path, endpoint, methods=methods, name=name))

    def get(self, path: str, name: str) -> None:
        self.add(path, ["GET"], name)

    def post(self, path: str, name: str) -> None:
        self.add(path, ["POST"], name)

    def delete(self, path: str, name: str) -> None:
        self.add(path, ["DELETE"], name)
