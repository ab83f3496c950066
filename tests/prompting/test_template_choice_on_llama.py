"""Gemma 3 270M, whose GGUF has no chat template, served on llama.cpp: the server picks
Gemma's format from its vocabulary, says so, and sends the prompt the model was trained
on; the Zephyr layout it used to fall back to makes it echo Zephyr's turns.

The model is the pretrained one (tests/support/gemma_model.py): it continues a prompt
rather than answering it, and does not end its turn by itself, so the replies here are
compared for the turns they echo, not for their wording.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import RunningServer, run_server

pytestmark = pytest.mark.llama

QUESTION = "What is the capital of France?"
# Gemma's prompt for it, without the <bos> the engine adds (gemma-3-270m-it's template).
GEMMA_PROMPT = f"<start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n"
TURN_MARKERS = ("<|user|>", "<|assistant|>", "<|system|>", "<start_of_turn>", "<end_of_turn>")


def gemma_server(model: Path, workdir: Path, chat_template: str) -> Iterator[RunningServer]:
    config = {
        "logging": {"level": "info"},
        "llama_cpp": {
            "model_path": str(model),
            "model_id": "gemma-3-270m",
            "chat_template": chat_template,
            "context_length": 1024,
            "parallel": 1,
        },
    }
    with run_server(config, workdir) as server:
        yield server


@pytest.fixture(scope="module")
def chosen(gemma_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from gemma_server(gemma_model, tmp_path_factory.mktemp("gemma-auto"), "auto")


@pytest.fixture(scope="module")
def zephyr(gemma_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from gemma_server(gemma_model, tmp_path_factory.mktemp("gemma-zephyr"), "zephyr")


def greedy_reply(server: RunningServer) -> tuple[str, int]:
    """The reply's text and the prompt's token count, for :data:`QUESTION`."""
    completion = server.client().chat.completions.create(
        model="gemma-3-270m",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=40,
    )
    return completion.choices[0].message.content or "", completion.usage.prompt_tokens


def test_the_log_names_the_choice_and_its_reason(chosen: RunningServer) -> None:
    assert (
        "chat template: gemma (no template in the GGUF; its vocabulary has <start_of_turn>)"
        in chosen.log()
    )


def test_the_prompt_is_gemmas_with_one_bos_and_its_turn_tokens(chosen: RunningServer) -> None:
    tokens = httpx.post(
        f"{chosen.base_url}/tokenize",
        json={"content": GEMMA_PROMPT, "add_special": True, "with_pieces": True},
        timeout=30,
    ).json()["tokens"]
    pieces = [token["piece"] for token in tokens]
    # One <bos>, then each marker as the one control token it is, not as text.
    assert pieces[:3] == ["<bos>", "<start_of_turn>", "user"]
    assert pieces.count("<bos>") == 1 and pieces.count("<start_of_turn>") == 2
    assert "<end_of_turn>" in pieces
    _, prompt_tokens = greedy_reply(chosen)
    assert prompt_tokens == len(tokens)


def test_the_reply_echoes_no_turns_where_zephyrs_layout_did(
    chosen: RunningServer, zephyr: RunningServer
) -> None:
    before, _ = greedy_reply(zephyr)
    after, _ = greedy_reply(chosen)
    # Before: the model wrote Zephyr's turns into its reply.
    assert "<|assistant|>" in before
    assert after and not any(marker in after for marker in TURN_MARKERS)
