"""``suffix`` on a model with fill-in-the-middle tokens (a tiny llama.cpp model that has
them): the prompt reaches the model between its prefix, suffix and middle markers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import requires_llama
from tests.support.server import RunningServer, run_server
from tests.support.tiny_llama_gguf import FIM_TOKENS, build_tiny_llama_gguf

pytestmark = requires_llama

MODEL = "tiny-fim"


@pytest.fixture(scope="module")
def fim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("fim")
    model = build_tiny_llama_gguf(root / "tiny-fim.gguf", fim=True)
    config = {"llama_cpp": {"model_path": str(model), "model_id": MODEL, "threads": 1}}
    with run_server(config, root) as server:
        yield server


def tokenize(server: RunningServer, text: str, **options: bool) -> list[int]:
    response = httpx.post(server.base_url + "/tokenize", json={"content": text, **options})
    tokens: list[int] = response.json()["tokens"]
    return tokens


def test_the_suffix_goes_between_the_markers(fim_server: RunningServer) -> None:
    prefix, suffix = "def add(a, b):\n", "\n    return total\n"
    client = fim_server.client(max_retries=0)
    completion = client.completions.create(
        model=MODEL, prompt=prefix, suffix=suffix, max_tokens=4, temperature=0
    )
    markers = [tokenize(fim_server, marker) for marker in FIM_TOKENS]
    assert all(len(ids) == 1 for ids in markers)  # each marker is one control token
    bos = tokenize(fim_server, "", add_special=True)
    expected = [
        *bos,
        *markers[0],
        *tokenize(fim_server, prefix),
        *markers[1],
        *tokenize(fim_server, suffix),
        *markers[2],
    ]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(expected)
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_the_suffix_streams_too(fim_server: RunningServer) -> None:
    client = fim_server.client(max_retries=0)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="x = ", suffix="\nprint(x)", max_tokens=3, stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
