"""Tokenizer work a client can ask for outside a generation, and the prompts it could
make the server tokenize before a refusal: each bounded.

- ``/tokenize`` refuses a text of more than ``MAX_TOKENIZE_TOKENS`` tokens (a 3.8 MB text
  with pieces was a 47.5 MB answer, and six at once took the server to 4.4 GB);
- tokenizer jobs run one at a time behind a bounded queue, as generations do: the rest
  get a 429;
- on llama.cpp a prompt too long for the context is refused from its length (at least N
  tokens), never tokenized first, and the count is never more than the real one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from picolm_server.errors import QueueFullError
from picolm_server.generation.core import MAX_TOKENIZE_TOKENS, TOKENIZER_QUEUE
from tests.conftest import HAS_LLAMA, requires_llama
from tests.generation.test_core import core_for
from tests.http.test_errors import assert_error
from tests.support.scripted_engine import ScriptedEngine
from tests.support.server import RunningServer

MODEL = "SmolLM2-135M-Instruct"
HUGE = "x " * 1_900_000  # 3.8 MB: about two million tokens


@requires_llama
def test_tokenize_refuses_a_text_over_the_cap(llama_server: RunningServer) -> None:
    response = httpx.post(
        llama_server.base_url + "/tokenize",
        json={"content": HUGE, "with_pieces": True},
        timeout=300,
    )
    assert response.status_code == 400, response.text[:300]
    error = assert_error(response, 400, type_="invalid_request_error", code="invalid_value")
    assert error["param"] == "content"
    assert str(MAX_TOKENIZE_TOKENS) in error["message"]


@requires_llama
def test_tokenize_answers_a_text_at_the_cap(llama_server: RunningServer) -> None:
    # " x" is one SmolLM2 token: the text is as many tokens as the cap allows.
    content = "x" + " x" * (MAX_TOKENIZE_TOKENS - 1)
    response = httpx.post(
        llama_server.base_url + "/tokenize",
        json={"content": content, "with_pieces": True},
        timeout=300,
    )
    assert response.status_code == 200, response.text[:300]
    tokens = response.json()["tokens"]
    assert len(tokens) == MAX_TOKENIZE_TOKENS
    assert "".join(item["piece"] for item in tokens) == content
    over = httpx.post(
        llama_server.base_url + "/tokenize", json={"content": content + " x"}, timeout=300
    )
    assert over.status_code == 400, over.text[:300]
    error = assert_error(over, 400, type_="invalid_request_error")
    assert f"{MAX_TOKENIZE_TOKENS + 1} tokens" in error["message"]


class BlockingEngine(ScriptedEngine):
    """Tokenizing waits until the test lets it go, so jobs pile up in the queue."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.running = 0
        self.most_at_once = 0
        self._count = threading.Lock()

    def tokenize(
        self, text: str, *, add_special: bool, parse_special: bool, limit: int | None = None
    ) -> list[int]:
        with self._count:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.release.wait(30)
            return super().tokenize(
                text, add_special=add_special, parse_special=parse_special, limit=limit
            )
        finally:
            with self._count:
                self.running -= 1

    def detokenize(self, tokens: Sequence[int]) -> str:
        return super().detokenize(tokens)


def test_tokenizer_jobs_run_one_at_a_time_behind_a_bounded_queue() -> None:
    async def scenario() -> None:
        engine = BlockingEngine()
        core = core_for(engine)
        jobs = [asyncio.ensure_future(core.tokenize("hello")) for _ in range(1 + TOKENIZER_QUEUE)]
        while core.core.tokenizer_work.queued < TOKENIZER_QUEUE:  # noqa: ASYNC110 (the queue is the observed state)
            await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError) as refused:
            await core.tokenize("hello")
        assert refused.value.status_code == 429
        assert "tokenizer job" in refused.value.message
        assert refused.value.headers["Retry-After"]
        engine.release.set()
        results = await asyncio.gather(*jobs)
        assert all(result == [0, engine.vocabulary.index("hello")] for result in results)
        assert engine.most_at_once == 1

    asyncio.run(scenario())


def test_a_cancelled_tokenizer_job_keeps_its_slot_until_its_thread_ends() -> None:
    async def scenario() -> None:
        engine = BlockingEngine()
        core = core_for(engine)
        first = asyncio.ensure_future(core.tokenize("hello"))
        while engine.running == 0:  # noqa: ASYNC110 (a worker thread sets it)
            await asyncio.sleep(0.01)
        first.cancel()
        second = asyncio.ensure_future(core.tokenize("hello"))
        await asyncio.sleep(0.1)
        # The first job's thread still runs: the second has not started beside it.
        assert engine.running == 1 and core.core.tokenizer_work.queued == 1
        engine.release.set()
        assert await second == [0, engine.vocabulary.index("hello")]
        assert engine.most_at_once == 1

    asyncio.run(scenario())


def _huge_prompt_refusal(llama_server: RunningServer, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(llama_server.base_url + path, json=body, timeout=300)
    error = assert_error(response, 400, type_="invalid_request_error")
    assert error["code"] == "context_length_exceeded"
    # Refused from its length: the count is a floor, not the result of tokenizing.
    assert "at least" in error["message"]
    return error


@requires_llama
@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": HUGE}]}, "messages"),
        ("/v1/responses", {"input": HUGE}, "input"),
        ("/v1/completions", {"prompt": HUGE}, "prompt"),
        ("/v1/messages", {"max_tokens": 4, "messages": [{"role": "user", "content": HUGE}]}, None),
    ],
)
def test_llama_refuses_a_huge_prompt_from_its_length(
    llama_server: RunningServer, path: str, body: dict[str, Any], param: str | None
) -> None:
    if param is None:  # Anthropic's envelope has no param
        response = httpx.post(
            llama_server.base_url + path, json={"model": MODEL, **body}, timeout=300
        )
        assert response.status_code == 400
        assert "at least" in response.json()["error"]["message"]
        return
    error = _huge_prompt_refusal(llama_server, path, {"model": MODEL, **body})
    assert error["param"] == param
    assert f"your {param} resulted in" in error["message"]


@requires_llama
def test_a_prompt_the_floor_cannot_refuse_gets_its_exact_count(
    llama_server: RunningServer,
) -> None:
    # 4,000 bytes of distinct words: under the floor's reach, over the context once
    # tokenized (2048 tokens).
    text = " ".join(f"w{n}" for n in range(1200))
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    response = httpx.post(llama_server.base_url + "/v1/chat/completions", json=body, timeout=300)
    error = assert_error(response, 400, type_="invalid_request_error")
    assert error["code"] == "context_length_exceeded"
    assert "at least" not in error["message"]


@pytest.fixture(scope="module")
def smollm2_vocab() -> Iterator[Any]:
    if not HAS_LLAMA:
        pytest.skip("needs the llama extra")
    import llama_cpp

    from picolm_server.server.bootstrap import embedded_model_path

    model = llama_cpp.Llama(model_path=str(embedded_model_path()), vocab_only=True, verbose=False)
    yield model._model.vocab
    model.close()


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(text=st.text(max_size=300) | st.text(alphabet=" \n\t-=_*#0", max_size=600))
def test_the_floor_never_exceeds_the_real_count(text: str, smollm2_vocab: Any) -> None:
    from picolm_server.engines.llama_cpp.vocab import TokenFloor, tokenize_capped

    data = text.encode("utf-8")
    tokens = tokenize_capped(smollm2_vocab, data, add_bos=False, special=False, limit=None)
    assert TokenFloor(smollm2_vocab).min_tokens(len(data)) <= len(tokens)


def test_the_smollm2_floor_is_read_from_its_vocabulary(smollm2_vocab: Any) -> None:
    from picolm_server.engines.llama_cpp.vocab import TokenFloor

    longest = TokenFloor(smollm2_vocab).longest_piece()
    # A byte-level BPE: a floor exists, and the longest token text is a run of a few
    # dozen characters at most.
    assert longest is not None and 8 <= longest <= 256


def test_tokenizing_with_a_cap_reports_the_exact_count(smollm2_vocab: Any) -> None:
    from picolm_server.engines.base import TokenLimitExceeded
    from picolm_server.engines.llama_cpp.vocab import tokenize_capped

    text = b"x" + b" x" * 99  # 100 tokens
    assert len(tokenize_capped(smollm2_vocab, text, add_bos=False, special=False, limit=100)) == 100
    with pytest.raises(TokenLimitExceeded) as over:
        tokenize_capped(smollm2_vocab, text, add_bos=False, special=False, limit=99)
    assert over.value.count == 100 and not over.value.at_least
