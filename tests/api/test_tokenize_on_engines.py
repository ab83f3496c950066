"""``/tokenize`` and ``/detokenize`` on real servers, both engines, where the engine's
tokenizer is the point: round trips, ids equal to llama.cpp's and PicoLM's own, the BOS,
pieces that spell the text, ids outside a real vocabulary. The shapes and the refusals
of bad bodies are in test_tokenize.py, in-process."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from picolm_server.engines.picolm.tokenizer import PicoLMTokenizer
from tests.support.both_engines import ENGINES, Target, target_for
from tests.support.picolm_setup import PicoLMFiles


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest) -> Target:
    return target_for(request)


def post(target: Target, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(target.server.base_url + path, json=body, headers=target.headers, timeout=60)


TEXTS = ["Hello world", "The capital of France is Paris.", "  spaces\tand\nlines ", "héllo 中文 🙂"]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(target: Target, text: str) -> None:
    tokens = post(target, "/tokenize", {"content": text}).json()["tokens"]
    assert tokens and all(isinstance(token, int) for token in tokens)
    # PicoLM puts a space marker before every prompt, and prints it as a space.
    expected = " " + text if target.name == "picolm" else text
    assert post(target, "/detokenize", {"tokens": tokens}).json() == {"content": expected}


def test_smollm2_ids_are_llama_cpps(llama_server: Any) -> None:
    response = httpx.post(llama_server.base_url + "/tokenize", json={"content": "Hello world"})
    assert response.json() == {"tokens": [19556, 905]}


def test_marker_text_is_a_control_token_unless_parse_special_is_off(llama_server: Any) -> None:
    url = llama_server.base_url
    parsed = httpx.post(url + "/tokenize", json={"content": "<|im_start|>"}).json()["tokens"]
    as_text = httpx.post(
        url + "/tokenize", json={"content": "<|im_start|>", "parse_special": False}
    ).json()["tokens"]
    assert parsed == [1]
    assert len(as_text) > 1 and 1 not in as_text


def test_picolm_ids_are_picolms(picolm_server: Any, picolm_files: PicoLMFiles) -> None:
    tokenizer = PicoLMTokenizer.from_gguf(picolm_files.model)
    headers = {"Authorization": f"Bearer {picolm_server.api_key}"}
    for text in TEXTS:
        for add_special in (False, True):
            body = {"content": text, "add_special": add_special}
            response = httpx.post(picolm_server.base_url + "/tokenize", json=body, headers=headers)
            assert response.json()["tokens"] == tokenizer.encode(text, bos=add_special)


def test_add_special_adds_the_bos_where_the_model_has_one(target: Target) -> None:
    plain = post(target, "/tokenize", {"content": "hello"}).json()["tokens"]
    special = post(target, "/tokenize", {"content": "hello", "add_special": True}).json()["tokens"]
    if target.name == "picolm":
        assert special == [1, *plain]  # PicoLM always feeds BOS first
    else:
        assert special == plain  # SmolLM2's GGUF says add_bos_token: false


def test_pieces(target: Target) -> None:
    body = {"content": "Hello world", "with_pieces": True}
    tokens = post(target, "/tokenize", body).json()["tokens"]
    assert all(set(item) == {"id", "piece"} for item in tokens)
    assert "".join(item["piece"] for item in tokens).strip() == "Hello world"
    ids = post(target, "/tokenize", {"content": "Hello world"}).json()["tokens"]
    assert [item["id"] for item in tokens] == ids


@pytest.mark.parametrize("bad", [-1, 10**9])
def test_ids_outside_the_vocabulary_are_400s(target: Target, bad: int) -> None:
    response = post(target, "/detokenize", {"tokens": [5, bad]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert str(bad) in error["message"]
