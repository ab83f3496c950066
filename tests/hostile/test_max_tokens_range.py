"""max_tokens far past what a context holds (OpenAI accepts any size): the reply runs to
the end of the context, never an empty "stop" (PicoLM's C ints overflow from 2^31)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import requires_llama
from tests.http.test_requests import post_chat, sse_payloads, user
from tests.support.picolm_setup import PicoLMServer
from tests.support.server import RunningServer

# The context of tests.support.tiny_llama_gguf's model (the server's -c does not raise it).
TINY_CONTEXT = 512
HUGE = [2**31 - 1, 2**31, 2**32 + 5, 2**63, 10**30]


@pytest.mark.parametrize("max_tokens", HUGE)
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_picolm_huge_max_tokens_runs_to_the_context(
    picolm_server: PicoLMServer, max_tokens: int, field: str
) -> None:
    response = post_chat(picolm_server, {"messages": user("no directive"), field: max_tokens})
    assert response.status_code == 200, response.text
    body = response.json()
    choice = body["choices"][0]
    # The stand-in never emits EOS without a directive: the context ends the reply.
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"]
    usage = body["usage"]
    # PicoLM samples its first token at the last prompt position, and runs to the end.
    assert usage["prompt_tokens"] + usage["completion_tokens"] == TINY_CONTEXT + 1


def test_picolm_huge_max_tokens_streamed(picolm_server: PicoLMServer) -> None:
    response = post_chat(
        picolm_server, {"messages": user("[[reply:a b c]]"), "max_tokens": 2**40, "stream": True}
    )
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "a b c"


@requires_llama
@pytest.mark.parametrize("max_tokens", [2**31, 2**63])
def test_llama_cpp_huge_max_tokens(llama_server: RunningServer, max_tokens: int) -> None:
    client = llama_server.client(max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "Reply with the single word: yes"}],
        max_tokens=max_tokens,
        temperature=0,
    )
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
