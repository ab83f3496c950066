"""``/v1/completions`` over HTTP on both engines: the official SDK streamed and not,
echo, suffix, the refusals, and every body and chunk checked against OpenAI's spec."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.support.both_engines import ENGINES, Target, target_for
from tests.support.openapi import check_schema


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest) -> Target:
    return target_for(request)


def client(target: Target) -> openai.OpenAI:
    return target.server.client(max_retries=0)  # type: ignore[no-any-return]


def prompt_for(target: Target, text: str, reply: str = "Paris is lovely") -> str:
    """A prompt; on the PicoLM stand-in it scripts the reply."""
    return f"{text} [[reply:{reply}]]" if target.name == "picolm" else text


def post(target: Target, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        target.server.base_url + "/v1/completions",
        json={"model": target.model, **body},
        headers=target.headers,
        timeout=300,
    )


def sse_payloads(response: httpx.Response) -> list[str]:
    return [
        line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")
    ]


def test_sdk_completion(target: Target) -> None:
    prompt = prompt_for(target, "The capital of France is")
    completion = client(target).completions.create(
        model=target.model, prompt=prompt, max_tokens=8, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    choice = completion.choices[0]
    assert choice.text
    assert choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 8
    if target.name == "picolm":
        # A raw completion keeps the model's leading space: it continues the prompt.
        assert choice.text == " Paris is lovely"
        assert choice.finish_reason == "stop"


def test_the_raw_body_is_openais_shape(target: Target) -> None:
    response = post(target, {"prompt": prompt_for(target, "Once upon a time"), "max_tokens": 4})
    assert response.status_code == 200
    check_schema(response.json(), "CreateCompletionResponse")


def test_max_tokens_defaults_to_16(target: Target) -> None:
    prompt = prompt_for(target, "Count:", " ".join(str(n) for n in range(40)))
    body = post(target, {"prompt": prompt, "temperature": 0}).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize("include_usage", [False, True])
def test_sdk_stream_reassembles_the_completion(target: Target, include_usage: bool) -> None:
    prompt = prompt_for(target, "The capital of France is")
    whole = client(target).completions.create(
        model=target.model, prompt=prompt, max_tokens=8, temperature=0
    )
    stream = client(target).completions.create(
        model=target.model,
        prompt=prompt,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].text
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(reason is None for reason in finishes[:-1])
    if include_usage:
        assert chunks[-1].choices == []
        assert chunks[-1].usage == whole.usage
    else:
        assert all(chunk.usage is None for chunk in chunks)


def test_stream_chunks_are_openais_shape(target: Target) -> None:
    body = {
        "prompt": prompt_for(target, "Once upon a time"),
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    payloads = sse_payloads(post(target, body))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    *texts, last, usage = chunks
    for chunk in texts:
        # The spec gives streamed chunks the reply's shape; OpenAI streams finish_reason
        # null until the last chunk (and so do the SDKs expect).
        assert chunk["choices"][0]["finish_reason"] is None
        choice = {**chunk["choices"][0], "finish_reason": "stop"}
        check_schema({**chunk, "choices": [choice]}, "CreateCompletionResponse")
        assert "usage" not in chunk
    check_schema(last, "CreateCompletionResponse")
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    check_schema(usage, "CreateCompletionResponse")
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] > 0
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert len({chunk["id"] for chunk in chunks}) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_echo_puts_the_prompt_first(target: Target, stream: bool) -> None:
    prompt = prompt_for(target, "Roses are red,", "violets are blue")
    api = client(target).completions
    if stream:
        chunks = list(
            api.create(model=target.model, prompt=prompt, max_tokens=6, echo=True, stream=True)
        )
        assert chunks[0].choices[0].text == prompt
        text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    else:
        text = (
            api.create(model=target.model, prompt=prompt, max_tokens=6, echo=True).choices[0].text
        )
    assert text.startswith(prompt)
    assert len(text) > len(prompt)


def test_max_tokens_0_with_echo_only_echoes(target: Target) -> None:
    body = post(target, {"prompt": "Just this.", "max_tokens": 0, "echo": True}).json()
    assert body["choices"][0]["text"] == "Just this."
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["prompt_tokens"] > 0
    check_schema(body, "CreateCompletionResponse")


def test_stop_strings_end_the_completion(target: Target) -> None:
    prompt = prompt_for(target, "List:", "one two three four five")
    if target.name == "llama":
        prompt = "1, 2, 3, 4, 5, 6, 7,"
    whole = post(target, {"prompt": prompt, "max_tokens": 12, "temperature": 0}).json()
    text = whole["choices"][0]["text"]
    cut = text.strip()[:2].strip() or text[:2]
    stopped = post(
        target, {"prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": [cut]}
    ).json()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert cut not in stopped["choices"][0]["text"]
    assert text.startswith(stopped["choices"][0]["text"])


def test_a_list_of_one_prompt(target: Target) -> None:
    prompt = prompt_for(target, "Hello")
    listed = post(target, {"prompt": [prompt], "max_tokens": 4, "temperature": 0}).json()
    single = post(target, {"prompt": prompt, "max_tokens": 4, "temperature": 0}).json()
    assert listed["choices"][0]["text"] == single["choices"][0]["text"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "logprobs": 1}, "logprobs"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "best_of": 2}, "best_of"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": "def f(", "suffix": "return 1"}, "suffix"),
        ({"prompt": "x", "echo": True, "suffix": "y"}, "echo"),
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({}, "prompt"),
    ],
)
def test_refusals_are_400s_naming_the_parameter(
    target: Target, body: dict[str, Any], param: str
) -> None:
    response = post(target, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    check_schema(response.json(), "ErrorResponse")


def test_sdk_suffix_without_fill_in_the_middle_tokens(target: Target) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(target).completions.create(
            model=target.model, prompt="def add(a, b):", suffix="    return c", max_tokens=8
        )
    assert "fill-in-the-middle" in caught.value.body["message"]


def test_an_unknown_model_is_404(target: Target) -> None:
    response = httpx.post(
        target.server.base_url + "/v1/completions",
        json={"model": "gpt-3.5-turbo-instruct", "prompt": "x"},
        headers=target.headers,
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_a_prompt_over_the_context_is_a_context_error(target: Target) -> None:
    response = post(target, {"prompt": "word " * 9000})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
