"""``/v1/completions`` end to end on the real SmolLM2 through llama.cpp: the official
SDK's completion, whole and streamed, as the spec shapes them. The wire format in every
detail is test_http.py, in-process."""

from __future__ import annotations

import pytest

from tests.conftest import requires_llama
from tests.support.openapi import check_schema
from tests.support.server import RunningServer

MODEL = "SmolLM2-135M-Instruct"

pytestmark = requires_llama


def test_sdk_completion_whole_and_streamed(llama_server: RunningServer) -> None:
    client = llama_server.client(max_retries=0)
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    check_schema(raw.http_response.json(), "CreateCompletionResponse")
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    choice = completion.choices[0]
    assert choice.text
    assert choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 8

    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="The capital of France is",
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == choice.text
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == (
        choice.finish_reason
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    # The same counts; only cached_tokens may differ, the second prompt reusing the first.
    streamed = chunks[-1].usage
    assert (streamed.prompt_tokens, streamed.completion_tokens, streamed.total_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
    )


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_completion(llama_server: RunningServer, stream: bool) -> None:
    """A stop string is found in the real model's tokens, however they split it."""
    client = llama_server.client(max_retries=0)
    prompt = "1, 2, 3, 4, 5, 6, 7,"
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    text = whole.choices[0].text
    cut = text.strip()[:2].strip() or text[:2]
    params = {"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": [cut]}
    if stream:
        chunks = list(client.completions.create(stream=True, **params))  # type: ignore[call-overload]
        stopped = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
        finish = chunks[-1].choices[0].finish_reason
    else:
        reply = client.completions.create(**params)  # type: ignore[call-overload]
        stopped, finish = reply.choices[0].text, reply.choices[0].finish_reason
    assert finish == "stop"
    assert cut not in stopped
    assert text.startswith(stopped)
