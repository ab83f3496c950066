"""The endpoints' wire format, through the official openai SDK (and raw httpx where the
wire format itself is the point), on the application in-process over a scripted engine
(tests/support/inprocess.py). What the PicoLM engine's contract makes of a request is
in test_requests_on_picolm.py, on a real server."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import openai
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.conftest import TEST_API_KEY
from tests.support.inprocess import InProcessServer
from tests.support.openapi import check_schema
from tests.support.picolm_setup import MODEL_ID, PicoLMServer
from tests.support.scripted_engine import prompt_token_count

AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}


def marker() -> str:
    return f"id-{uuid.uuid4().hex[:12]}"


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def post_chat(server: PicoLMServer, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    body = {"model": MODEL_ID, **body}
    return httpx.post(
        f"{server.base_url}/v1/chat/completions", json=body, headers=AUTH, timeout=30, **kwargs
    )


async def send_chat(server: InProcessServer, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    """:func:`post_chat` for the in-process app."""
    body = {"model": MODEL_ID, **body}
    return await server.http().post("/v1/chat/completions", json=body, headers=AUTH, **kwargs)


def sse_payloads(text: str) -> list[str]:
    """The data of each server-sent event, in order; events are separated by blank lines."""
    events = [event for event in text.split("\n\n") if event.strip()]
    assert all(event.startswith("data: ") for event in events), events
    return [event[len("data: ") :] for event in events]


async def stream_raw(server: InProcessServer, body: dict[str, Any]) -> list[str]:
    response = await send_chat(server, {**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_payloads(response.text)


async def complete_text(
    client: openai.AsyncOpenAI, content: str, *, stream: bool = False, **kw: Any
) -> str:
    if stream:
        chunks = await client.chat.completions.create(
            model=MODEL_ID, messages=user(content), stream=True, **kw
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    completion = await client.chat.completions.create(model=MODEL_ID, messages=user(content), **kw)
    return completion.choices[0].message.content or ""


@pytest.fixture
def client(app_server: InProcessServer) -> openai.AsyncOpenAI:
    return app_server.client(max_retries=0, timeout=30)


pytestmark = pytest.mark.anyio


# ---- models and health -------------------------------------------------------------------


async def test_models_list_and_retrieve(
    client: openai.AsyncOpenAI, app_server: InProcessServer
) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert all(isinstance(m, Model) and m.object == "model" for m in models.data)
    model = await client.models.retrieve(MODEL_ID)
    assert model.id == MODEL_ID and model.owned_by
    raw = await app_server.http().get("/v1/models", headers=AUTH)
    check_schema(raw.json(), "ListModelsResponse")
    raw = await app_server.http().get(f"/v1/models/{MODEL_ID}", headers=AUTH)
    check_schema(raw.json(), "Model")


async def test_health_needs_no_key(app_server: InProcessServer) -> None:
    response = await app_server.http().get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["model"] == MODEL_ID
    assert body["running"] == 0 and body["queued"] == 0


# ---- chat completions ---------------------------------------------------------------------


async def test_completion_with_sdk_types_and_schema(
    client: openai.AsyncOpenAI, app_server: InProcessServer
) -> None:
    tag = marker()
    completion = await client.chat.completions.create(
        model=MODEL_ID,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"{tag} [[reply:Hello there, world!]]"},
        ],
    )
    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion" and completion.model == MODEL_ID
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello there, world!"
    assert choice.finish_reason == "stop"
    run = app_server.engine.requests[-1]
    assert completion.usage is not None
    assert tag in run.prompt
    assert completion.usage.prompt_tokens == prompt_token_count(run.prompt)
    # Three words, and the EOS token, which is not part of the reply.
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3
    check_schema(
        completion.model_dump(mode="json", exclude_unset=True), "CreateChatCompletionResponse"
    )


async def test_raw_completion_matches_schema(app_server: InProcessServer) -> None:
    response = await send_chat(app_server, {"messages": user("[[reply:Fine.]]")})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    check_schema(body, "CreateChatCompletionResponse")
    assert body["choices"][0]["message"]["content"] == "Fine."
    assert body["choices"][0]["logprobs"] is None


async def test_streaming_with_sdk(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL_ID, messages=user("[[reply:one two three four]]"), stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "one two three four"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)


async def test_stream_wire_format_and_schema(app_server: InProcessServer) -> None:
    payloads = await stream_raw(app_server, {"messages": user("[[reply:alpha beta]]")})
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        check_schema(chunk, "CreateChatCompletionStreamResponse")
        assert chunk["object"] == "chat.completion.chunk"
        assert "usage" not in chunk
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_include_usage(
    client: openai.AsyncOpenAI, app_server: InProcessServer
) -> None:
    stream = await client.chat.completions.create(
        model=MODEL_ID,
        messages=user("[[reply:a b c d e]]"),
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=3,
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 3 and last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"
    payloads = await stream_raw(
        app_server,
        {"messages": user("[[reply:x]]"), "stream_options": {"include_usage": True}},
    )
    for payload in payloads[:-1]:
        check_schema(json.loads(payload), "CreateChatCompletionStreamResponse")
    assert json.loads(payloads[-2])["usage"]["completion_tokens"] == 1


# ---- stop sequences -------------------------------------------------------------------------

REPLY = "alpha beta gamma delta epsilon"


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("gamma", "alpha beta "),
        (["zzz", " gamma"], "alpha beta"),
        ("ta gam", "alpha be"),  # split across the tokens " beta" and " gamma"
        (["x", "y", "z", "lta eps"], "alpha beta gamma de"),
        ("not there", REPLY),
        ("beta gamma delta epsilon omega", REPLY),  # a prefix held back, then released
    ],
)
async def test_stop_sequences(
    client: openai.AsyncOpenAI, stop: str | list[str], expected: str
) -> None:
    for stream in (False, True):
        text = await complete_text(client, f"[[reply:{REPLY}]]", stream=stream, stop=stop)
        assert text == expected


async def test_stop_sequence_never_streamed_partially(app_server: InProcessServer) -> None:
    payloads = await stream_raw(
        app_server, {"messages": user(f"[[reply:{REPLY}]]"), "stop": "ta gam"}
    )
    pieces = [
        choice["delta"].get("content") or ""
        for payload in payloads[:-1]
        for choice in json.loads(payload)["choices"]
    ]
    assert "".join(pieces) == "alpha be"
    assert not any("ta" in piece or "gam" in piece for piece in pieces)
    assert json.loads(payloads[-2])["choices"][0]["finish_reason"] == "stop"


# ---- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ],
)
async def test_misleading_parameters_are_refused(
    client: openai.AsyncOpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL_ID, messages=user("hi"), **extra)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"


async def test_n_equal_one_is_accepted(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL_ID, messages=user("[[reply:one]]"), n=1
    )
    assert len(completion.choices) == 1 and completion.choices[0].index == 0


async def test_text_content_parts(client: openai.AsyncOpenAI, app_server: InProcessServer) -> None:
    tag = marker()
    completion = await client.chat.completions.create(
        model=MODEL_ID,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"part one {tag}"},
                    {"type": "text", "text": "[[reply:parts]]"},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == "parts"
    run = app_server.engine.requests[-1]
    assert run.prompt is not None and f"part one {tag}\n[[reply:parts]]" in run.prompt
