"""The real application in the test's own process, over a scripted engine: the wire
format without a server process or a model.

:func:`serve_in_process` builds the app as the command line does (``create_app`` with
its whole middleware stack, from settings in the YAML layout), runs its lifespan, and
hands out clients on ``httpx.ASGITransport``: raw httpx, and the official openai and
anthropic SDKs. The transport hands the app's body over once the app has sent all of
it, so a stream arrives whole, in order; what needs a socket (a client that goes away,
slow clients, connection limits) is tested on a real server process instead.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
from starlette.applications import Starlette

from picolm_server.api.responses.store import ResponseStore
from picolm_server.config.settings import Settings
from picolm_server.generation import GenerationCore
from picolm_server.generation.scheduler import Scheduler
from picolm_server.server.app import create_app
from picolm_server.shelf.catalog import ShelfModel
from picolm_server.shelf.model_file import check_model_file
from tests.support.picolm_setup import MODEL_ID
from tests.support.scripted_engine import DirectedEngine, ScriptedEngine
from tests.support.scripted_shelf import scripted_shelf, shelf_model

BASE_URL = "http://picolm.test"
# What the session's PicoLM stand-in server is given (tests/conftest.py), so that a test
# moved here from it finds the same model id, key and limits.
API_KEY = "sk-test-0123456789"
CONTEXT_LENGTH = 512
DEFAULT_CONFIG: dict[str, dict[str, Any]] = {
    "server": {"api_key": API_KEY, "max_concurrent": 1, "max_queue": 8, "max_body": 65536},
    "picolm": {"model_id": MODEL_ID, "max_tokens": 32, "timeout_seconds": 60},
}


def app_for(core: GenerationCore, settings: Settings) -> Starlette:
    """``create_app`` with the server section's settings, as the command line calls it."""
    server = settings.server
    return create_app(
        core,
        api_key=server.api_key,
        max_body=server.max_body,
        log_requests=settings.logging.log_requests,
        body_timeout=server.body_timeout,
        engine_name=settings.resolved_engine(),
        cors_origins=server.cors_origins,
        metrics_public=server.metrics_public,
        ui=server.ui,
        sse_ping_seconds=server.sse_ping_seconds,
        # As the command line opens it (serve_in_process gives a temporary store_path
        # when the test gives none: the user's own store is never written).
        response_store=ResponseStore(
            Path(settings.responses.store_path) if settings.responses.store_path else None,
            settings.responses.store_max_bytes,
        ),
        server_settings=server,
    )


def settings_for(**sections: dict[str, Any]) -> Settings:
    """:data:`DEFAULT_CONFIG` with ``sections`` merged in key by key."""
    config: dict[str, Any] = {"engine": "picolm"}
    for name in {*DEFAULT_CONFIG, *sections}:
        config[name] = {**DEFAULT_CONFIG.get(name, {}), **sections.get(name, {})}
    return Settings.from_values(config)


@dataclass
class InProcessServer:
    """The app, the engine behind it and clients on it; a stand-in for
    :class:`tests.support.server.RunningServer` where no process is needed."""

    app: Starlette
    engine: ScriptedEngine
    core: GenerationCore
    api_key: str
    base_url: str = BASE_URL
    _clients: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        """A raw client; closed with the server."""
        transport = httpx.ASGITransport(app=self.app)
        client = httpx.AsyncClient(transport=transport, base_url=self.base_url, **kwargs)
        self._clients.push_async_callback(client.aclose)
        return client

    def client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """The openai SDK with the server's key (``api_key=`` to give another)."""
        kwargs.setdefault("api_key", self.api_key or "unused")
        return openai.AsyncOpenAI(base_url=self.openai_base_url, http_client=self.http(), **kwargs)

    def anthropic(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        """The anthropic SDK with the server's key (``api_key=`` to give another). It
        speaks through httpx2, httpx's successor, which has the same transport."""
        kwargs.setdefault("api_key", self.api_key or "unused")
        transport = httpx2.ASGITransport(app=self.app)
        http = httpx2.AsyncClient(transport=transport, base_url=self.base_url)
        self._clients.push_async_callback(http.aclose)
        return anthropic.AsyncAnthropic(base_url=self.base_url, http_client=http, **kwargs)


@contextlib.asynccontextmanager
async def serve_in_process(
    engine: ScriptedEngine | None = None,
    *,
    model_file: Path | None = None,
    **sections: dict[str, Any],
) -> AsyncIterator[InProcessServer]:
    """The app over ``engine`` (default: a :class:`DirectedEngine` serving
    :data:`MODEL_ID` with a :data:`CONTEXT_LENGTH`-token context), configured as
    :data:`DEFAULT_CONFIG` with ``sections`` merged in; its lifespan runs around the
    block. Without a ``responses.store_path``, the Responses store is a file in a
    temporary directory removed afterwards. ``model_file``: a GGUF file the shelf's entry
    for the model is read from (its size, metadata), as the catalog reads it; the engine
    is still ``engine``."""
    async with contextlib.AsyncExitStack() as stack:
        if not sections.get("responses", {}).get("store_path"):
            temporary = stack.enter_context(tempfile.TemporaryDirectory(prefix="picolm-store-"))
            store_path = str(Path(temporary) / "responses.sqlite3")
            sections = {
                **sections,
                "responses": {**sections.get("responses", {}), "store_path": store_path},
            }
        async with _serve(engine, settings_for(**sections), model_file) as server:
            yield server


def _entry(model: ShelfModel, model_file: Path | None) -> ShelfModel:
    if model_file is None:
        return model
    checked = check_model_file(model_file)
    return replace(model, path=model_file, size_bytes=checked.size_bytes, metadata=checked.metadata)


@contextlib.asynccontextmanager
async def _serve(
    engine: ScriptedEngine | None, settings: Settings, model_file: Path | None = None
) -> AsyncIterator[InProcessServer]:
    if engine is None:
        engine = DirectedEngine()
        engine.model = replace(
            engine.model, id=settings.picolm.model_id, context_length=CONTEXT_LENGTH
        )
    model_id = engine.model.id
    # Its own name: the scheduler below is built again at every load of the model.
    limits = settings.server
    shelf = scripted_shelf(
        {model_id: engine},
        models={model_id: _entry(shelf_model(model_id, settings.picolm), model_file)},
        scheduler=lambda e: Scheduler(
            limits.max_concurrent or e.abilities.parallel, limits.max_queue
        ),
        max_waiting=limits.max_queue,
    )
    core = GenerationCore(models=shelf, prompt_schema=settings.structured_output.prompt_schema)
    app = app_for(core, settings)
    async with app.router.lifespan_context(app), contextlib.AsyncExitStack() as clients:
        server = InProcessServer(app, engine, core, settings.server.api_key, _clients=clients)
        yield server
