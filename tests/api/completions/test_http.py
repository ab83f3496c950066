"""``/v1/completions``' wire format through the official SDK (streamed and not) and raw
httpx, on the application in-process over a scripted engine that replies as the prompt
directs: echo, stop, the refusals, and every body and chunk checked against OpenAI's
spec. The end-to-end smoke on the real SmolLM2 is test_http_on_llama.py."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.support.inprocess import InProcessServer
from tests.support.openapi import check_schema
from tests.support.picolm_setup import MODEL_ID

pytestmark = pytest.mark.anyio


def client(server: InProcessServer) -> openai.AsyncOpenAI:
    return server.client(max_retries=0)


def prompt_for(text: str, reply: str = "Paris is lovely") -> str:
    """A prompt that scripts the reply."""
    return f"{text} [[reply:{reply}]]"


async def post(server: InProcessServer, body: dict[str, Any]) -> httpx.Response:
    return await server.http().post(
        "/v1/completions",
        json={"model": MODEL_ID, **body},
        headers={"Authorization": f"Bearer {server.api_key}"},
    )


def sse_payloads(response: httpx.Response) -> list[str]:
    return [
        line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")
    ]


async def test_sdk_completion(app_server: InProcessServer) -> None:
    prompt = prompt_for("The capital of France is")
    completion = await client(app_server).completions.create(
        model=MODEL_ID, prompt=prompt, max_tokens=8, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.model == MODEL_ID
    choice = completion.choices[0]
    # A raw completion keeps the model's leading space: it continues the prompt.
    assert choice.text == " Paris is lovely"
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 8
    # The prompt reaches the engine as given: no chat template around it.
    (request,) = app_server.engine.requests
    assert request.prompt == prompt


async def test_the_raw_body_is_openais_shape(app_server: InProcessServer) -> None:
    response = await post(app_server, {"prompt": prompt_for("Once upon a time"), "max_tokens": 4})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    check_schema(response.json(), "CreateCompletionResponse")


async def test_max_tokens_defaults_to_16(app_server: InProcessServer) -> None:
    prompt = prompt_for("Count:", " ".join(str(n) for n in range(40)))
    body = (await post(app_server, {"prompt": prompt, "temperature": 0})).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize("include_usage", [False, True])
async def test_sdk_stream_reassembles_the_completion(
    app_server: InProcessServer, include_usage: bool
) -> None:
    prompt = prompt_for("The capital of France is")
    api = client(app_server).completions
    whole = await api.create(model=MODEL_ID, prompt=prompt, max_tokens=8, temperature=0)
    stream = await api.create(
        model=MODEL_ID,
        prompt=prompt,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].text == " Paris is lovely"
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(reason is None for reason in finishes[:-1])
    if include_usage:
        assert chunks[-1].choices == []
        assert chunks[-1].usage == whole.usage
    else:
        assert all(chunk.usage is None for chunk in chunks)


async def test_stream_chunks_are_openais_shape(app_server: InProcessServer) -> None:
    body = {
        "prompt": prompt_for("Once upon a time"),
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = await post(app_server, body)
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    *texts, last, usage = chunks
    assert texts
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
async def test_echo_puts_the_prompt_first(app_server: InProcessServer, stream: bool) -> None:
    prompt = prompt_for("Roses are red,", "violets are blue")
    api = client(app_server).completions
    if stream:
        chunks = [
            chunk
            async for chunk in await api.create(
                model=MODEL_ID, prompt=prompt, max_tokens=6, echo=True, stream=True
            )
        ]
        assert chunks[0].choices[0].text == prompt
        text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    else:
        completion = await api.create(model=MODEL_ID, prompt=prompt, max_tokens=6, echo=True)
        text = completion.choices[0].text
    assert text == prompt + " violets are blue"


async def test_max_tokens_0_with_echo_only_echoes(app_server: InProcessServer) -> None:
    body = (await post(app_server, {"prompt": "Just this.", "max_tokens": 0, "echo": True})).json()
    assert body["choices"][0]["text"] == "Just this."
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["prompt_tokens"] > 0
    check_schema(body, "CreateCompletionResponse")


@pytest.mark.parametrize("stream", [False, True])
async def test_stop_strings_end_the_completion(app_server: InProcessServer, stream: bool) -> None:
    prompt = prompt_for("List:", "one two three four five")
    api = client(app_server).completions
    whole = await api.create(model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0)
    assert whole.choices[0].text == " one two three four five"
    params: dict[str, Any] = {"max_tokens": 12, "temperature": 0, "stop": ["thr"]}
    if stream:
        chunks = [
            chunk
            async for chunk in await api.create(
                model=MODEL_ID, prompt=prompt, stream=True, **params
            )
        ]
        text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
        finish = chunks[-1].choices[0].finish_reason
    else:
        stopped = await api.create(model=MODEL_ID, prompt=prompt, **params)
        text, finish = stopped.choices[0].text, stopped.choices[0].finish_reason
    assert finish == "stop"
    assert text == " one two "


async def test_a_list_of_one_prompt(app_server: InProcessServer) -> None:
    prompt = prompt_for("Hello")
    listed = (await post(app_server, {"prompt": [prompt], "max_tokens": 4})).json()
    single = (await post(app_server, {"prompt": prompt, "max_tokens": 4})).json()
    assert listed["choices"][0]["text"] == single["choices"][0]["text"] == " Paris is lovely"


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
async def test_refusals_are_400s_naming_the_parameter(
    app_server: InProcessServer, body: dict[str, Any], param: str
) -> None:
    response = await post(app_server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    check_schema(response.json(), "ErrorResponse")
    assert app_server.engine.requests == []


async def test_sdk_suffix_without_fill_in_the_middle_tokens(app_server: InProcessServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client(app_server).completions.create(
            model=MODEL_ID, prompt="def add(a, b):", suffix="    return c", max_tokens=8
        )
    assert isinstance(caught.value.body, dict)
    assert "fill-in-the-middle" in caught.value.body["message"]


async def test_an_unknown_model_is_404(app_server: InProcessServer) -> None:
    response = await post(app_server, {"model": "gpt-3.5-turbo-instruct", "prompt": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_a_prompt_over_the_context_is_a_context_error(app_server: InProcessServer) -> None:
    response = await post(app_server, {"prompt": "word " * 9000})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "prompt"
