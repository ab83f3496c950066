"""The app in-process over a scripted engine, its shelf entry read from a tiny GGUF
file (so that listings have real metadata and a real digest), and the official
``ollama`` client on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import ollama
import pytest

from tests.support.inprocess import CONTEXT_LENGTH, InProcessServer, serve_in_process
from tests.support.picolm_setup import MODEL_ID
from tests.support.scripted_engine import EmbeddingEngine
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama_gguf(tmp_path_factory.mktemp("ollama") / "tiny.gguf", fim=True)


@pytest.fixture
async def ollama_app(tiny_gguf: Path) -> AsyncIterator[InProcessServer]:
    """The app whose model (:data:`MODEL_ID`) embeds and directs its replies."""
    engine = EmbeddingEngine()
    engine.model = replace(engine.model, id=MODEL_ID, context_length=CONTEXT_LENGTH)
    async with serve_in_process(engine, model_file=tiny_gguf) as server:
        yield server


def client_for(server: InProcessServer, key: str | None = None) -> ollama.AsyncClient:
    """The official client on the in-process app, with the server's key."""
    return ollama.AsyncClient(
        host=server.base_url,
        transport=httpx.ASGITransport(app=server.app),
        headers={"Authorization": f"Bearer {key or server.api_key}"},
    )


@pytest.fixture
def client(ollama_app: InProcessServer) -> ollama.AsyncClient:
    return client_for(ollama_app)
