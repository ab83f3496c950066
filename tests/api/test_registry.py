"""The lazily imported APIs' routes (api/routers.py) match what each module declares."""

from __future__ import annotations

import importlib

from starlette.routing import Route

from picolm_server.api.registry import ROUTERS
from picolm_server.http.route_table import LazyRoutes, Routes


def _declared(routes: list[Route]) -> list[tuple[str, frozenset[str], str]]:
    return [(route.path, frozenset(route.methods or ()), route.name) for route in routes]


def test_each_lazy_table_lists_exactly_its_modules_routes() -> None:
    lazy = [table for table in ROUTERS if isinstance(table, LazyRoutes)]
    assert len(lazy) == 8
    for table in lazy:
        own: Routes = importlib.import_module(table.module).router
        assert _declared(table.routes) == _declared(own.routes), table.module
        for route in table.routes:
            assert callable(getattr(importlib.import_module(table.module), route.name))


def test_every_path_is_declared_once() -> None:
    declared = [
        (route.path, method)
        for table in ROUTERS
        for route in table.routes
        for method in route.methods or ()
    ]
    assert len(declared) == len(set(declared))
