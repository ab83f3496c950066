"""The Messages API over HTTP through the official ``anthropic`` SDK, on both engines:
PicoLM through its stand-in (scripted replies) and the real SmolLM2 on llama.cpp. Every
body and stream event is checked against the SDK's own types, strictly."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import requires_llama
from tests.support import anthropic_types
from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL
from tests.support.picolm_setup import PicoLMFiles, PicoLMServer
from tests.support.server import RunningServer
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

LLAMA_MODEL = "SmolLM2-135M-Instruct"
KEY = "sk-ant-test-key"

WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
EMAIL = {
    "name": "send_email",
    "description": "Send an email",
    "input_schema": {
        "type": "object",
        "properties": {"to": {"type": "string"}, "subject": {"type": "string"}},
        "required": ["to", "subject"],
    },
}
TOOLS = [WEATHER, EMAIL]


def tag() -> str:
    return f"id-{uuid.uuid4().hex[:10]}"


def sdk_client(server: RunningServer, **kwargs: Any) -> anthropic.Anthropic:
    options: dict[str, Any] = {"api_key": server.api_key or "unused", "max_retries": 0}
    return anthropic.Anthropic(base_url=server.base_url, **{**options, **kwargs})


SAMPLING = ("temperature", "top_p", "top_k")


def sdk_params(params: dict[str, Any]) -> dict[str, Any]:
    """The SDK's keyword arguments: this SDK version has no sampling parameters of its
    own (the API still takes them), so they go in ``extra_body``."""
    sampling = {key: params[key] for key in SAMPLING if key in params}
    rest = {key: value for key, value in params.items() if key not in SAMPLING}
    return {**rest, "extra_body": sampling} if sampling else rest


def create(client: anthropic.Anthropic, **params: Any) -> anthropic.types.Message:
    """messages.create, with the raw body checked strictly against the SDK's types."""
    raw = client.messages.with_raw_response.create(**sdk_params(params))
    checked = anthropic_types.message(raw.http_response.content)
    message = raw.parse()
    assert message == checked
    return message


def raw_stream(server: RunningServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A streamed request's events, each checked strictly against the SDK's types."""
    response = httpx.post(
        f"{server.base_url}/v1/messages",
        json={**body, "stream": True},
        headers={"x-api-key": server.api_key},
        timeout=900,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for name, data in anthropic_types.parse_sse(response.content):
        anthropic_types.stream_event(name, data)
        events.append((name, json.loads(data)))
    return events


def assert_sequence(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Anthropic's order: message_start, blocks (start, deltas, stop; one ping after the
    first start), message_delta, message_stop."""
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    blocks = names[1:-2]
    if blocks:
        assert blocks[:2] == ["content_block_start", "ping"]
        assert blocks.count("ping") == 1
    index = -1
    open_block = False
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert not open_block and data["index"] == index + 1
            index, open_block = data["index"], True
        elif name == "content_block_delta":
            assert open_block and data["index"] == index
        elif name == "content_block_stop":
            assert open_block and data["index"] == index
            open_block = False
    assert not open_block


def assert_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    parsed = anthropic_types.error(response.content)
    assert parsed.error.type == kind
    assert parsed.error.message
    return parsed.error.message


# ---- PicoLM through the stand-in ---------------------------------------------------------


@pytest.fixture(scope="module")
def pico(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    root = tmp_path_factory.mktemp("picolm-anthropic")
    model = build_tiny_llama_gguf(root / "tiny-4k.gguf", context_length=4096)
    with picolm_files.serve(
        root,
        server={"api_key": KEY},
        picolm={"model_path": str(model), "context_length": 4096, "max_tokens": 64},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def pico_client(pico: PicoLMServer) -> anthropic.Anthropic:
    return sdk_client(pico.server)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_create_text(pico_client: anthropic.Anthropic) -> None:
    message = create(
        pico_client,
        model=PICOLM_MODEL,
        max_tokens=40,
        system="You are terse.",
        messages=user("Hi [[reply:Hello there, friend.]]"),
        temperature=0.5,
        top_p=0.9,
        metadata={"user_id": "u-1"},
    )
    assert message.id.startswith("msg_")
    assert message.model == PICOLM_MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello there, friend."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.usage.cache_read_input_tokens == 0


def test_system_as_blocks_and_content_as_blocks(pico: PicoLMServer) -> None:
    marker = tag()
    create(
        sdk_client(pico.server),
        model=PICOLM_MODEL,
        max_tokens=20,
        system=[{"type": "text", "text": f"Rule {marker}."}, {"type": "text", "text": "Two."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Part one."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Noted."}]},
            {"role": "user", "content": [{"type": "text", "text": "[[reply:ok]]"}]},
        ],
    )
    prompt = pico.runs_with(marker)[-1].prompt
    assert f"Rule {marker}.\nTwo." in prompt
    assert prompt.index("Part one.") < prompt.index("Noted.") < prompt.index("[[reply:ok]]")


def test_max_tokens_ends_with_max_tokens(pico_client: anthropic.Anthropic) -> None:
    message = create(
        pico_client,
        model=PICOLM_MODEL,
        max_tokens=3,
        messages=user("[[reply:one two three four five six seven]]"),
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_stop_sequences(pico: PicoLMServer, pico_client: anthropic.Anthropic) -> None:
    params: dict[str, Any] = {
        "model": PICOLM_MODEL,
        "max_tokens": 40,
        "messages": user("[[reply:alpha beta gamma delta]]"),
        "stop_sequences": ["zeta", "gamma"],
    }
    message = create(pico_client, **params)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "gamma"
    assert message.content[0].text == "alpha beta "  # type: ignore[union-attr]
    events = raw_stream(pico.server, params)
    assert_sequence(events)
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "gamma"}
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "alpha beta "


def test_stream_text_with_the_sdk(pico: PicoLMServer, pico_client: anthropic.Anthropic) -> None:
    params: dict[str, Any] = {
        "model": PICOLM_MODEL,
        "max_tokens": 40,
        # Slow tokens: without a pause, tokens already in the pipe arrive as one piece.
        "messages": user("[[reply:Streams arrive piece by piece.]] [[slow:0.05]]"),
    }
    with pico_client.messages.stream(**sdk_params(params)) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == "Streams arrive piece by piece."
    assert final.content[0].text == "Streams arrive piece by piece."  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    whole = create(pico_client, **params)
    assert final.usage.output_tokens == whole.usage.output_tokens
    events = raw_stream(pico.server, params)
    assert_sequence(events)
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] == whole.usage.input_tokens
    assert events[-2][1]["usage"]["output_tokens"] == whole.usage.output_tokens


CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


@pytest.mark.parametrize(
    ("choice", "reply"),
    [
        ({"type": "any"}, CALL),
        ({"type": "auto"}, CALL),
        ({"type": "tool", "name": "send_email"}, '{"to": "ann@example.com", "subject": "Hi"}'),
        ({"type": "any", "disable_parallel_tool_use": True}, CALL),
    ],
)
def test_tool_choice_makes_calls(
    pico: PicoLMServer, pico_client: anthropic.Anthropic, choice: dict[str, Any], reply: str
) -> None:
    params: dict[str, Any] = {
        "model": PICOLM_MODEL,
        "max_tokens": 40,
        "temperature": 0,
        "tools": TOOLS,
        "tool_choice": choice,
        "messages": user(f"Do it [[reply:{reply}]]"),
    }
    message = create(pico_client, **params)
    assert message.stop_reason == "tool_use"
    calls = [block for block in message.content if block.type == "tool_use"]
    assert len(calls) == 1
    expected = json.loads(reply)
    if choice["type"] == "tool":
        assert (calls[0].name, calls[0].input) == ("send_email", expected)
    else:
        assert (calls[0].name, calls[0].input) == (expected["name"], expected["arguments"])
    assert calls[0].id.startswith("toolu_")
    # The same through the stream: input_json_delta pieces that join to the input.
    with pico_client.messages.stream(**sdk_params(params)) as stream:
        final = stream.get_final_message()
    streamed = [block for block in final.content if block.type == "tool_use"]
    assert [(c.name, c.input) for c in streamed] == [(c.name, c.input) for c in calls]
    assert final.stop_reason == "tool_use"
    events = raw_stream(pico.server, params)
    assert_sequence(events)
    kinds = {d["delta"]["type"] for n, d in events if n == "content_block_delta"}
    assert "input_json_delta" in kinds


def test_tool_choice_auto_may_answer_in_text(pico_client: anthropic.Anthropic) -> None:
    message = create(
        pico_client,
        model=PICOLM_MODEL,
        max_tokens=40,
        tools=TOOLS,
        tool_choice={"type": "auto"},
        messages=user("[[reply:No tool needed.]]"),
    )
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]


def test_tool_choice_none_shows_no_tools(pico: PicoLMServer) -> None:
    marker = tag()
    message = create(
        sdk_client(pico.server),
        model=PICOLM_MODEL,
        max_tokens=40,
        tools=TOOLS,
        tool_choice={"type": "none"},
        messages=user(f"{marker} [[reply:{CALL}]]"),
    )
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert "Get the current weather" not in pico.runs_with(marker)[-1].prompt


@pytest.mark.parametrize(
    ("result", "is_error", "seen"),
    [
        ("18 degrees and sunny", None, "18 degrees and sunny"),
        (
            [{"type": "text", "text": "18 degrees"}, {"type": "text", "text": "sunny"}],
            None,
            "18 degrees\nsunny",
        ),
        ("city not found", True, "Error: city not found"),
    ],
)
def test_tool_round_trip(pico: PicoLMServer, result: Any, is_error: bool | None, seen: str) -> None:
    client = sdk_client(pico.server)
    marker = tag()
    first = create(
        client,
        model=PICOLM_MODEL,
        max_tokens=40,
        tools=TOOLS,
        tool_choice={"type": "any"},
        messages=user(f"Weather in Paris? [[reply:{CALL}]]"),
    )
    call = first.content[-1]
    assert call.type == "tool_use"
    tool_result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call.id, "content": result}
    if is_error is not None:
        tool_result["is_error"] = is_error
    second = create(
        client,
        model=PICOLM_MODEL,
        max_tokens=40,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {
                "role": "user",
                "content": [
                    tool_result,
                    {"type": "text", "text": f"{marker} [[reply:It is sunny.]]"},
                ],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "It is sunny."  # type: ignore[union-attr]
    prompt = pico.runs_with(marker)[-1].prompt
    assert seen in prompt
    assert prompt.index('"city": "Paris"') < prompt.index(seen) < prompt.index(marker)


def test_count_tokens_equals_the_prompt_tokens_reported(pico_client: anthropic.Anthropic) -> None:
    params: dict[str, Any] = {
        "model": PICOLM_MODEL,
        "system": "Be brief.",
        "tools": TOOLS,
        "messages": user("Count me [[reply:ok]]"),
    }
    raw = pico_client.messages.with_raw_response.count_tokens(**params)
    counted = anthropic_types.tokens_count(raw.http_response.content).input_tokens
    message = create(pico_client, max_tokens=10, **params)
    usage = message.usage
    assert counted == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    without_tools = pico_client.messages.count_tokens(
        model=PICOLM_MODEL, messages=user("Count me [[reply:ok]]")
    )
    assert 0 < without_tools.input_tokens < counted


# ---- auth ----------------------------------------------------------------------------------


def test_x_api_key_and_bearer_are_both_accepted(pico: PicoLMServer) -> None:
    params: dict[str, Any] = {
        "model": PICOLM_MODEL,
        "max_tokens": 10,
        "messages": user("[[reply:in]]"),
    }
    by_key = anthropic.Anthropic(base_url=pico.base_url, api_key=KEY, max_retries=0)
    assert create(by_key, **params).content[0].text == "in"  # type: ignore[union-attr]
    by_token = anthropic.Anthropic(
        base_url=pico.base_url, api_key=None, auth_token=KEY, max_retries=0
    )
    assert create(by_token, **params).content[0].text == "in"  # type: ignore[union-attr]
    # The OpenAI routes take x-api-key too.
    response = httpx.get(f"{pico.base_url}/v1/models", headers={"x-api-key": KEY})
    assert response.status_code == 200


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}])
def test_missing_or_wrong_key_is_authentication_error(
    pico: PicoLMServer, headers: dict[str, str]
) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = httpx.post(f"{pico.base_url}{path}", json={}, headers=headers)
        assert_error(response, 401, "authentication_error")
    wrong = anthropic.Anthropic(base_url=pico.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model=PICOLM_MODEL, max_tokens=5, messages=user("x"))


# ---- errors ----------------------------------------------------------------------------------


def post(server: PicoLMServer, body: Any, path: str = "/v1/messages") -> httpx.Response:
    """``body`` as JSON, or as raw bytes (malformed JSON)."""
    payload = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(f"{server.base_url}{path}", headers={"x-api-key": KEY}, timeout=60, **payload)


BASE: dict[str, Any] = {"model": PICOLM_MODEL, "max_tokens": 10, "messages": user("hi")}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"model": PICOLM_MODEL, "messages": user("hi")}, "max_tokens"),
        ({**BASE, "max_tokens": "10"}, "max_tokens"),
        ({**BASE, "temperature": 1.5}, "temperature"),
        ({**BASE, "messages": []}, "messages"),
        ({**BASE, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        (
            {**BASE, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "'image'",
        ),
        (
            {
                **BASE,
                "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
            },
            "'document'",
        ),
        (
            {
                **BASE,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "image", "source": {}}],
                            }
                        ],
                    }
                ],
            },
            "'image'",
        ),
        ({**BASE, "thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        (
            {**BASE, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "web_search_20250305",
        ),
        ({**BASE, "container": "c-1"}, "container"),
        ({**BASE, "mcp_servers": [{"type": "url", "url": "http://x", "name": "x"}]}, "mcp_servers"),
        ({**BASE, "tools": [{"name": "f"}]}, "input_schema"),
        ({**BASE, "tool_choice": {"type": "any"}}, "tool_choice"),
        ({**BASE, "tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}}, "nope"),
        ({**BASE, "tool_choice": {"type": "sometimes"}}, "tool_choice"),
        (
            {**BASE, "messages": [*user("hi"), {"role": "assistant", "content": "The answer is"}]},
            "messages.1",
        ),
    ],
)
def test_invalid_requests_are_named(pico: PicoLMServer, body: dict[str, Any], named: str) -> None:
    message = assert_error(post(pico, body), 400, "invalid_request_error")
    assert named in message


def test_thinking_disabled_is_accepted(pico: PicoLMServer) -> None:
    response = post(
        pico, {**BASE, "messages": user("[[reply:ok]]"), "thinking": {"type": "disabled"}}
    )
    assert response.status_code == 200, response.text


def test_malformed_json_and_unknown_model_and_path(pico: PicoLMServer) -> None:
    assert_error(post(pico, b'{"model": '), 400, "invalid_request_error")
    assert "nope" in assert_error(post(pico, {**BASE, "model": "nope"}), 404, "not_found_error")
    counted = post(pico, {"model": "nope", "messages": user("x")}, "/v1/messages/count_tokens")
    assert_error(counted, 404, "not_found_error")
    assert_error(post(pico, BASE, "/v1/messages/nothing"), 404, "not_found_error")
    response = httpx.get(f"{pico.base_url}/v1/messages", headers={"x-api-key": KEY})
    assert_error(response, 405, "invalid_request_error")
    with pytest.raises(anthropic.NotFoundError):
        sdk_client(pico.server).messages.create(model="nope", max_tokens=5, messages=user("x"))


def test_openai_routes_keep_openais_envelope(pico: PicoLMServer) -> None:
    response = httpx.post(
        f"{pico.base_url}/v1/chat/completions",
        json={"model": "nope", "messages": user("x")},
        headers={"x-api-key": KEY},
    )
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_engine_failure(pico: PicoLMServer) -> None:
    body = {**BASE, "messages": user("[[crash]]")}
    message = assert_error(post(pico, body), 500, "api_error")
    assert "exited with status 3" in message
    response = post(pico, {**body, "stream": True})
    assert response.status_code == 200
    events = anthropic_types.parse_sse(response.content)
    name, data = events[-1]
    assert name == "error"
    assert "exited with status 3" in anthropic_types.stream_event(name, data).error.message
    client = sdk_client(pico.server)
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(**sdk_params(body)) as stream,
    ):
        stream.get_final_message()


@pytest.fixture(scope="module")
def one_slot(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    """One generation at a time and no queue: a second request is refused at once."""
    root = tmp_path_factory.mktemp("picolm-anthropic-one-slot")
    with picolm_files.serve(root, server={"max_queue": 0}) as server:
        yield server


def test_queue_full_is_rate_limit_error_with_retry_after(one_slot: PicoLMServer) -> None:
    with httpx.Client(base_url=one_slot.base_url, timeout=30) as http:
        body = {"model": PICOLM_MODEL, "max_tokens": 500, "messages": user("[[slow:0.2]]")}
        with http.stream("POST", "/v1/messages", json={**body, "stream": True}) as running:
            assert running.status_code == 200
            deadline = time.monotonic() + 20
            while http.get("/health").json()["running"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            response = http.post("/v1/messages", json={**body, "stream": False})
            assert_error(response, 429, "rate_limit_error")
            assert int(response.headers["retry-after"]) >= 1
            client = anthropic.Anthropic(
                base_url=one_slot.base_url, api_key="unused", max_retries=0
            )
            with pytest.raises(anthropic.RateLimitError):
                client.messages.create(**sdk_params(body))


# ---- SmolLM2 on llama.cpp ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(llama_server: RunningServer) -> anthropic.Anthropic:
    # A generous client timeout: a shared, loaded machine can be slow (nothing is timed).
    return sdk_client(llama_server, timeout=900)


ASK = user("What is the capital of France? Answer in English.")


@requires_llama
def test_llama_create_and_stream(llama_server: RunningServer, llama: anthropic.Anthropic) -> None:
    params: dict[str, Any] = {
        "model": LLAMA_MODEL,
        "max_tokens": 30,
        "temperature": 0,
        "messages": ASK,
    }
    message = create(llama, system="You are a helpful assistant.", **params)
    assert "Paris" in message.content[0].text  # type: ignore[union-attr]
    assert message.stop_reason in ("end_turn", "max_tokens")
    with llama.messages.stream(
        system="You are a helpful assistant.", **sdk_params(params)
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == message.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens == message.usage.output_tokens
    events = raw_stream(llama_server, {"system": "You are a helpful assistant.", **params})
    assert_sequence(events)


@requires_llama
def test_llama_stop_sequence(llama: anthropic.Anthropic) -> None:
    params: dict[str, Any] = {
        "model": LLAMA_MODEL,
        "max_tokens": 30,
        "temperature": 0,
        "messages": ASK,
    }
    whole = create(llama, **params).content[0].text  # type: ignore[union-attr]
    word = next(word for word in whole.split() if len(word) > 3 and whole.index(word) > 0)
    message = create(llama, stop_sequences=[word], **params)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == word
    assert message.content[0].text == whole[: whole.index(word)]  # type: ignore[union-attr]


@requires_llama
@pytest.mark.parametrize(
    "choice",
    [
        {"type": "any"},
        {"type": "tool", "name": "get_weather"},
        {"type": "any", "disable_parallel_tool_use": True},
    ],
)
def test_llama_forced_tool_use(
    llama_server: RunningServer, llama: anthropic.Anthropic, choice: dict[str, Any]
) -> None:
    params: dict[str, Any] = {
        "model": LLAMA_MODEL,
        "max_tokens": 60,
        "temperature": 0,
        "tools": TOOLS,
        "tool_choice": choice,
        "messages": user("What is the weather in Paris?"),
    }
    message = create(llama, **params)
    assert message.stop_reason == "tool_use"
    calls = [block for block in message.content if block.type == "tool_use"]
    assert calls
    if choice["type"] == "tool" or choice.get("disable_parallel_tool_use"):
        assert len(calls) == 1
    if choice["type"] == "tool":
        assert calls[0].name == "get_weather"
    for call in calls:
        assert call.name in ("get_weather", "send_email")
        assert call.id.startswith("toolu_")
        if call.name == "get_weather":
            assert isinstance(call.input["city"], str)
    if choice != {"type": "any"}:
        return
    # Streamed: the same calls (greedy), input_json_delta pieces that join to the input.
    with llama.messages.stream(**sdk_params(params)) as stream:
        final = stream.get_final_message()
    assert [(c.name, c.input) for c in final.content if c.type == "tool_use"] == [
        (c.name, c.input) for c in calls
    ]
    events = raw_stream(llama_server, params)
    assert_sequence(events)
    kinds = {d["delta"]["type"] for n, d in events if n == "content_block_delta"}
    assert "input_json_delta" in kinds


@requires_llama
@pytest.mark.parametrize("choice", [{"type": "auto"}, {"type": "none"}])
def test_llama_auto_and_none(llama: anthropic.Anthropic, choice: dict[str, Any]) -> None:
    message = create(
        llama,
        model=LLAMA_MODEL,
        max_tokens=60,
        temperature=0,
        tools=TOOLS,
        tool_choice=choice,
        messages=user("What is the weather in Paris?"),
    )
    kinds = {block.type for block in message.content}
    if choice["type"] == "none":
        assert kinds <= {"text"} and message.stop_reason in ("end_turn", "max_tokens")
    else:
        assert (message.stop_reason == "tool_use") == ("tool_use" in kinds)


@requires_llama
def test_llama_tool_round_trip_and_count_tokens(llama: anthropic.Anthropic) -> None:
    first = create(
        llama,
        model=LLAMA_MODEL,
        max_tokens=60,
        temperature=0,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=user("What is the weather in Paris?"),
    )
    call = first.content[-1]
    assert call.type == "tool_use"
    params: dict[str, Any] = {
        "model": LLAMA_MODEL,
        "tools": [WEATHER],
        "messages": [
            *user("What is the weather in Paris?"),
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "18 C and sunny"}
                ],
            },
        ],
    }
    second = create(llama, max_tokens=40, temperature=0, **params)
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    counted = llama.messages.count_tokens(**params).input_tokens
    usage = second.usage
    assert counted == usage.input_tokens + (usage.cache_read_input_tokens or 0)
