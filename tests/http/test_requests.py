"""The endpoints over HTTP, on a real server driving the PicoLM stand-in, through the
official openai SDK (and raw httpx where the wire format itself is the point)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from picolm_server.engines.picolm.tokenizer import PicoLMTokenizer
from tests.conftest import TEST_API_KEY
from tests.support.fake_picolm import reply_pieces
from tests.support.openapi import check_schema
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer

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


def sse_payloads(text: str) -> list[str]:
    """The data of each server-sent event, in order; events are separated by blank lines."""
    events = [event for event in text.split("\n\n") if event.strip()]
    assert all(event.startswith("data: ") for event in events), events
    return [event[len("data: ") :] for event in events]


def stream_raw(server: PicoLMServer, body: dict[str, Any]) -> list[str]:
    response = post_chat(server, {**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_payloads(response.text)


@pytest.fixture(scope="module")
def client(picolm_server: PicoLMServer) -> openai.OpenAI:
    return picolm_server.client(max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def tokenizer(picolm_files: PicoLMFiles) -> PicoLMTokenizer:
    return PicoLMTokenizer.from_gguf(picolm_files.model)


# ---- models and health -------------------------------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI, picolm_server: PicoLMServer) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert all(isinstance(m, Model) and m.object == "model" for m in models.data)
    model = client.models.retrieve(MODEL_ID)
    assert model.id == MODEL_ID and model.owned_by
    raw = httpx.get(f"{picolm_server.base_url}/v1/models", headers=AUTH)
    check_schema(raw.json(), "ListModelsResponse")
    raw = httpx.get(f"{picolm_server.base_url}/v1/models/{MODEL_ID}", headers=AUTH)
    check_schema(raw.json(), "Model")


def test_health_needs_no_key(picolm_server: PicoLMServer) -> None:
    response = httpx.get(f"{picolm_server.base_url}/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["model"] == MODEL_ID
    assert body["running"] == 0 and body["queued"] == 0


# ---- chat completions ---------------------------------------------------------------------


def test_completion_with_sdk_types_and_schema(
    client: openai.OpenAI, picolm_server: PicoLMServer, tokenizer: PicoLMTokenizer
) -> None:
    tag = marker()
    completion = client.chat.completions.create(
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
    run = picolm_server.wait_for_run(tag)
    assert completion.usage is not None
    assert run.prompt is not None
    assert completion.usage.prompt_tokens == tokenizer.count(run.prompt)
    # Three words, and the EOS token, which is not part of the reply.
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3
    check_schema(
        completion.model_dump(mode="json", exclude_unset=True), "CreateChatCompletionResponse"
    )


def test_raw_completion_matches_schema(picolm_server: PicoLMServer) -> None:
    response = post_chat(picolm_server, {"messages": user("[[reply:Fine.]]")})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    check_schema(body, "CreateChatCompletionResponse")
    assert body["choices"][0]["message"]["content"] == "Fine."
    assert body["choices"][0]["logprobs"] is None


def test_streaming_with_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=user("[[reply:one two three four]]"), stream=True
    )
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "one two three four"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)


def test_stream_wire_format_and_schema(picolm_server: PicoLMServer) -> None:
    payloads = stream_raw(picolm_server, {"messages": user("[[reply:alpha beta]]")})
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        check_schema(chunk, "CreateChatCompletionStreamResponse")
        assert chunk["object"] == "chat.completion.chunk"
        assert "usage" not in chunk
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_include_usage(client: openai.OpenAI, picolm_server: PicoLMServer) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID,
            messages=user("[[reply:a b c d e]]"),
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=3,
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 3 and last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"
    payloads = stream_raw(
        picolm_server,
        {"messages": user("[[reply:x]]"), "stream_options": {"include_usage": True}},
    )
    for payload in payloads[:-1]:
        check_schema(json.loads(payload), "CreateChatCompletionStreamResponse")
    assert json.loads(payloads[-2])["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("limit", [1, 2, 7])
def test_max_tokens_is_exact(client: openai.OpenAI, field: str, limit: int) -> None:
    """PicoLM generates N+1 tokens for -n N: the server must still give exactly N."""
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=user(f"tell me a story {marker()}"), **{field: limit}
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == limit
    assert completion.choices[0].finish_reason == "length"
    content = completion.choices[0].message.content
    assert content is not None and len(content.split(" ")) == limit


def test_reply_ending_exactly_at_the_budget_is_stop(client: openai.OpenAI) -> None:
    # Three words then EOS: with max_tokens=3 the EOS is the N+1th token and ends it.
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=user("[[reply:red green blue]]"), max_tokens=3
    )
    assert completion.choices[0].message.content == "red green blue"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_eos_text_and_trailing_newline_never_in_reply(client: openai.OpenAI) -> None:
    for stream in (False, True):
        text = complete_text(client, "[[reply:line one\nline two]]", stream=stream)
        assert text == "line one\nline two"
    text = complete_text(client, "[[reply:ends with newline\n]]")
    assert text == "ends with newline\n"


def complete_text(client: openai.OpenAI, content: str, *, stream: bool = False, **kw: Any) -> str:
    if stream:
        chunks = client.chat.completions.create(
            model=MODEL_ID, messages=user(content), stream=True, **kw
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    completion = client.chat.completions.create(model=MODEL_ID, messages=user(content), **kw)
    return completion.choices[0].message.content or ""


def test_split_utf8_is_decoded(client: openai.OpenAI) -> None:
    reply = "héllo wörld 😀 中文 ok"
    # The stand-in writes every byte of a non-ASCII character on its own.
    assert any(len(piece) == 1 and piece[0] >= 0x80 for piece in reply_pieces(reply))
    for stream in (False, True):
        assert complete_text(client, f"[[reply:{reply}]]", stream=stream) == reply


def test_model_that_stops_at_once(client: openai.OpenAI) -> None:
    for stream in (False, True):
        assert complete_text(client, "[[eos-now]]", stream=stream) == ""
    completion = client.chat.completions.create(model=MODEL_ID, messages=user("[[eos-now]]"))
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 0


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
def test_stop_sequences(client: openai.OpenAI, stop: str | list[str], expected: str) -> None:
    for stream in (False, True):
        text = complete_text(client, f"[[reply:{REPLY}]]", stream=stream, stop=stop)
        assert text == expected


def test_stop_sequence_never_streamed_partially(picolm_server: PicoLMServer) -> None:
    payloads = stream_raw(picolm_server, {"messages": user(f"[[reply:{REPLY}]]"), "stop": "ta gam"})
    pieces = [
        choice["delta"].get("content") or ""
        for payload in payloads[:-1]
        for choice in json.loads(payload)["choices"]
    ]
    assert "".join(pieces) == "alpha be"
    assert not any("ta" in piece or "gam" in piece for piece in pieces)
    assert json.loads(payloads[-2])["choices"][0]["finish_reason"] == "stop"


def test_stop_sequence_ends_the_engine_process(
    client: openai.OpenAI, picolm_server: PicoLMServer
) -> None:
    tag = marker()
    text = complete_text(client, f"{tag} [[slow:0.02]]", stop=" the", max_tokens=2000)
    assert " the" not in text
    run = picolm_server.wait_for_run(tag)
    assert run.exit is None  # killed, not run to its end


# ---- parameters ------------------------------------------------------------------------------


def test_parameters_reach_the_engine_and_the_prompt_goes_on_stdin(
    client: openai.OpenAI, picolm_server: PicoLMServer
) -> None:
    tag = marker()
    client.chat.completions.create(
        model=MODEL_ID,
        messages=user(f"secret {tag} [[reply:ok]]"),
        max_tokens=9,
        temperature=0.25,
        top_p=0.5,
        seed=1234,
        # Harmless parameters a local model ignores are accepted.
        user="someone",
        presence_penalty=0.5,
    )
    run = picolm_server.wait_for_run(tag)
    args = dict(zip(run.argv[2::2], run.argv[3::2], strict=False))
    assert float(args["-t"]) == 0.25 and float(args["-k"]) == 0.5
    assert args["-s"] == "1234" and args["-n"] == "8" and args["-j"] == "1"
    assert int(args["-c"]) == 512
    assert "-p" not in run.argv
    assert run.prompt is not None and f"secret {tag}" in run.prompt
    assert not any(tag in arg for arg in run.argv)


def test_prompt_never_in_the_process_command_line(
    client: openai.OpenAI, picolm_server: PicoLMServer
) -> None:
    """Read /proc/PID/cmdline of the engine while it runs: no part of the prompt is there."""
    tag = marker()
    cmdline = Path("/proc/self/cmdline")
    if not cmdline.exists():
        pytest.skip("needs /proc")
    with client.chat.completions.with_streaming_response.create(
        model=MODEL_ID, messages=user(f"private {tag} [[slow:0.05]]"), stream=True, max_tokens=200
    ) as response:
        lines = response.iter_lines()
        next(lines)
        run = picolm_server.wait_for_run(tag)
        seen = Path(f"/proc/{run.pid}/cmdline").read_bytes()
    assert seen and b"picolm" in seen
    assert tag.encode() not in seen and b"private" not in seen


def test_same_prompt_and_seed_same_reply(client: openai.OpenAI) -> None:
    content = f"deterministic {marker()}"
    first = complete_text(client, content, seed=7, temperature=0.9, max_tokens=6)
    second = complete_text(client, content, seed=7, temperature=0.9, max_tokens=6)
    other = complete_text(client, content, seed=8, temperature=0.9, max_tokens=6)
    assert first == second
    assert first != other


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_misleading_parameters_are_refused(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_ID, messages=user("hi"), **extra)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"


def test_n_equal_one_is_accepted(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL_ID, messages=user("[[reply:one]]"), n=1)
    assert len(completion.choices) == 1 and completion.choices[0].index == 0


def test_text_content_parts(client: openai.OpenAI, picolm_server: PicoLMServer) -> None:
    tag = marker()
    completion = client.chat.completions.create(
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
    run = picolm_server.wait_for_run(tag)
    assert run.prompt is not None and f"part one {tag}\n[[reply:parts]]" in run.prompt
