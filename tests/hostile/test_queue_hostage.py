"""A request whose prompt cannot fit never holds a generation slot or a queue place: it is
tokenized and refused before it waits for one, at a cost bounded by the context (a prompt
whose byte length alone proves it too long is refused untokenized)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from picolm_server.engines.picolm.tokenizer import PicoLMTokenizer
from tests.http.test_errors import assert_error, marker
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer, wait_until_gone

TINY_CONTEXT = 512


@pytest.fixture
def one_slot_server(picolm_files: PicoLMFiles, tmp_path: Path) -> Iterator[PicoLMServer]:
    # One generation at a time and one queue place: any request that waited for a slot
    # while another holds it would leave no room for the next.
    with picolm_files.serve(
        tmp_path, server={"max_concurrent": 1, "max_queue": 1, "max_body": 16 * 2**20}
    ) as server:
        yield server


def chat(server: PicoLMServer, content: str, **extra: object) -> httpx.Response:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)


def too_long_to_tokenize(tag: str) -> str:
    """Over 3.9 MB: its byte length alone shows it cannot fit."""
    return tag + " " + "x " * 2_000_000


def too_long_once_tokenized(tag: str, tokenizer: PicoLMTokenizer) -> str:
    """Short enough in bytes that it may fit, too many tokens once tokenized."""
    words = [tag]
    while tokenizer.count(" ".join(words)) < TINY_CONTEXT + 50:
        words += ["word", "x", "of", "tokens"]
    text = " ".join(words)
    assert tokenizer.min_prompt_tokens(len(text.encode())) < TINY_CONTEXT
    return text


def test_prompts_that_cannot_fit_never_wait_for_the_slot(
    one_slot_server: PicoLMServer, picolm_files: PicoLMFiles
) -> None:
    server = one_slot_server
    tokenizer = PicoLMTokenizer.from_gguf(picolm_files.model)
    holder = marker()
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": f"{holder} [[hang]]"}],
        "stream": True,
    }
    with (
        httpx.Client(timeout=120) as http,
        http.stream("POST", f"{server.base_url}/v1/chat/completions", json=body) as held,
    ):
        # The slot is taken: the stream has started and its engine hangs after two tokens.
        assert held.status_code == 200
        lines = held.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        engine = server.wait_for_run(holder)

        big_tags = [marker() for _ in range(4)]
        small = marker()
        bigs = [too_long_to_tokenize(tag) for tag in big_tags[:3]]
        bigs.append(too_long_once_tokenized(big_tags[3], tokenizer))
        with ThreadPoolExecutor(len(bigs) + 1) as pool:
            refused = [pool.submit(chat, server, text) for text in bigs]
            waiting = pool.submit(chat, server, f"{small} [[reply:small]]")
            for future in refused:
                # Refused for its length, not for a full queue (429): none of them took
                # the one queue place, let alone the slot.
                error = assert_error(future.result(), 400, type_="invalid_request_error")
                assert error["code"] == "context_length_exceeded"
                assert error["param"] == "messages"
            # The small request waits behind the held slot, in the queue place.
            assert not waiting.done()
            health = httpx.get(f"{server.base_url}/health").json()
            assert health["running"] == 1
            held.close()
            response = waiting.result()
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "small"

    wait_until_gone([engine.pid], timeout=30)
    # No engine run for any refused prompt.
    assert all(server.runs_with(tag) == [] for tag in big_tags)
    health = httpx.get(f"{server.base_url}/health").json()
    assert health["status"] == "ok" and health["running"] == 0 and health["queued"] == 0


def test_byte_bound_message_says_at_least(one_slot_server: PicoLMServer) -> None:
    response = chat(one_slot_server, too_long_to_tokenize(marker()))
    error = assert_error(response, 400, type_="invalid_request_error")
    assert error["code"] == "context_length_exceeded"
    assert "at least" in error["message"]
