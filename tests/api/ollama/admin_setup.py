"""The app in this process with a real models directory, for the model administration
tests: a scripted model ``main`` (the default) on a shelf whose files are real, clients
from any address, nginx serving a real GGUF, and a server that redirects."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import openai
from starlette.applications import Starlette

from picolm_server.generation import GenerationCore
from picolm_server.shelf.shelf import Shelf
from tests.support.inprocess import BASE_URL, app_for, settings_for
from tests.support.scripted_engine import DirectedEngine
from tests.support.scripted_shelf import scripted_shelf

MAIN = "main"  # the default model
SECOND = "second"  # another model, preloaded


@dataclass
class AdminApp:
    app: Starlette
    shelf: Shelf
    engines: dict[str, DirectedEngine]
    models_dir: Path
    api_key: str
    _clients: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def http(self, client: str = "127.0.0.1", key: str | None = None) -> httpx.AsyncClient:
        """A client calling from the address ``client``, with ``key`` (default: the
        app's) as a Bearer token."""
        transport = httpx.ASGITransport(app=self.app, client=(client, 40000))
        key = self.api_key if key is None else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        http = httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=headers)
        self._clients.push_async_callback(http.aclose)
        return http

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{BASE_URL}/v1", api_key=self.api_key or "unused", http_client=self.http()
        )

    def ids(self) -> list[str]:
        return [model.id for model in self.shelf.catalog]


def _make(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)


@contextlib.asynccontextmanager
async def admin_app(models_dir: Path, **server: Any) -> AsyncIterator[AdminApp]:
    """The app over the scripted models :data:`MAIN` and :data:`SECOND`, its models
    directory ``models_dir``, its ``server:`` section the test's (no key unless
    given)."""
    _make(models_dir)
    settings = settings_for(server={"api_key": "", **server})
    engines = {}
    for model_id in (MAIN, SECOND):
        engine = engines[model_id] = DirectedEngine()
        engine.model = replace(engine.model, id=model_id, context_length=512)
    shelf = scripted_shelf(engines)
    shelf.catalog.models_dir = models_dir
    app = app_for(GenerationCore(models=shelf), settings)
    async with app.router.lifespan_context(app), contextlib.AsyncExitStack() as clients:
        yield AdminApp(app, shelf, engines, models_dir, settings.server.api_key, clients)


class _Redirect(http.server.BaseHTTPRequestHandler):
    location = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def redirecting_to(location: str) -> Iterator[str]:
    """A server on loopback answering every GET with a redirect to ``location``; its
    base URL."""
    handler = type("Redirect", (_Redirect,), {"location": location})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
