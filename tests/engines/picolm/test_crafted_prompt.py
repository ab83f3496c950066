"""The prompt crafted around PicoLM's off-by-one, checked with the exact tokenizer."""

from __future__ import annotations

import pytest

from picolm_server.engines.picolm.crafted_prompt import craft_prompt
from picolm_server.engines.picolm.tokenizer import PicoLMTokenizer
from tests.support.picolm_setup import PicoLMFiles


@pytest.fixture(scope="module")
def tokenizer(picolm_files: PicoLMFiles) -> PicoLMTokenizer:
    return PicoLMTokenizer.from_gguf(picolm_files.model)


@pytest.mark.parametrize(
    "text",
    [
        "<|user|>\nhello there, how is the world today?</s>\n<|assistant|>\n the robot said",
        "the robot said hello to the world and it was morning light on the sea",
        "héllo wörld 中 \t tabs\nand\n\nnewlines  double  spaces 🙂 emoji at the end",
    ],
)
def test_crafted_prompt_feeds_the_right_tokens(tokenizer: PicoLMTokenizer, text: str) -> None:
    tokens = tokenizer.encode(text)
    found = 0
    for positions in range(2, len(tokens)):
        crafted = craft_prompt(tokenizer, tokens, positions)
        if crafted is None:
            continue
        found += 1
        c = tokenizer.encode(crafted)
        assert len(c) == len(tokens)
        assert c[positions - 1] == tokens[positions]
        assert c[positions + 1 :] == tokens[positions + 1 :]
    assert found >= len(tokens) // 2
    assert craft_prompt(tokenizer, tokens, len(tokens)) is None
