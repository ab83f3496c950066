"""ReplyTokenCounter and the prompt-length bound of the PicoLM tokenizer: the running count
equals re-tokenizing the whole reply at every piece, and the bound never exceeds a count."""

from __future__ import annotations

import random

import pytest

from picolm_server.engines.picolm.tokenizer import PicoLMTokenizer
from tests.support.tiny_llama_gguf import tiny_vocab

PIECES = [
    "the", " ", "  ", "\n", "ing", "é", "中文", "😀", "</s>", "<0x41>", ".", "...", "\t",
    "\u2581", "a", "\u0000", "x", " hello", "ö", "\ufffd",
]  # fmt: skip


@pytest.fixture(params=["default", "quirks", "no_space_marker"])
def tokenizer(request: pytest.FixtureRequest) -> PicoLMTokenizer:
    tokens, scores, _types = tiny_vocab(request.param)
    return PicoLMTokenizer([t.encode() for t in tokens], scores)


def test_running_count_is_the_whole_reply_retokenized(tokenizer: PicoLMTokenizer) -> None:
    rng = random.Random(7)
    for _ in range(200):
        counter = tokenizer.reply_counter()
        reply = ""
        for _ in range(rng.randrange(1, 30)):
            piece = "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 4)))
            reply += piece
            assert counter.feed(piece) == tokenizer.count(reply, bos=False), repr(reply)


def test_min_prompt_tokens_is_a_lower_bound(tokenizer: PicoLMTokenizer) -> None:
    rng = random.Random(11)
    for _ in range(300):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 80))).replace("\0", "")
        assert tokenizer.min_prompt_tokens(len(text.encode())) <= tokenizer.count(text)


def test_a_prompt_of_megabytes_is_refused_by_its_length(tokenizer: PicoLMTokenizer) -> None:
    bound = tokenizer.min_prompt_tokens(4 * 2**20)
    if any(tokenizer.lookup(b"<0x%02X>" % byte) < 0 for byte in range(256)):
        # A byte without a byte token is dropped: a prompt's length then bounds nothing.
        assert bound == 1
    else:
        # Every token stands for at most 255 bytes: 4 MB is over 16,000 tokens.
        assert bound > 16_000
