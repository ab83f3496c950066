"""The Messages API's wire format through the official ``anthropic`` SDK (and raw httpx
where the bytes are the point), on the application in-process over the scripted engine
(tests/support/inprocess.py). Every body and stream event is checked against the SDK's
own types, strictly; every answer carries the request's id as the SDK reads it. What a
real server process adds is in test_routes_on_picolm.py (the PicoLM stand-in) and
test_routes_on_llama.py (the real SmolLM2 on llama.cpp)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import anthropic
import anyio
import httpx
import pytest

from picolm_server.engines.base import GenerationEvent, GenerationRequest
from tests.support import anthropic_types
from tests.support.inprocess import CONTEXT_LENGTH, InProcessServer, serve_in_process
from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL
from tests.support.scripted_engine import SCHEMA_ABILITIES, DirectedEngine, prompt_token_count

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


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


SAMPLING = ("temperature", "top_p", "top_k")


def sdk_params(params: dict[str, Any]) -> dict[str, Any]:
    """The SDK's keyword arguments: this SDK version has no sampling parameters of its
    own (the API still takes them), so they go in ``extra_body``."""
    sampling = {key: params[key] for key in SAMPLING if key in params}
    rest = {key: value for key, value in params.items() if key not in SAMPLING}
    return {**rest, "extra_body": sampling} if sampling else rest


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


def assert_request_id(response: httpx.Response) -> str:
    """The request's id, in the ``request-id`` header Anthropic's SDK reads and in the
    request log's ``x-request-id``."""
    request_id = response.headers["request-id"]
    assert request_id and request_id == response.headers["x-request-id"]
    return request_id


def assert_error(response: httpx.Response, status: int, kind: str) -> str:
    """An error in Anthropic's envelope: its status, type, a message, and the request's
    id in the body as in the headers. Returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    parsed = anthropic_types.error(response.content)
    assert parsed.error.type == kind
    assert parsed.error.message
    assert parsed.request_id == assert_request_id(response)
    return parsed.error.message


async def create(client: anthropic.AsyncAnthropic, **params: Any) -> anthropic.types.Message:
    """messages.create, with the raw body checked strictly against the SDK's types and
    the request's id where the SDK finds it."""
    raw = await client.messages.with_raw_response.create(**sdk_params(params))
    checked = anthropic_types.message(raw.http_response.content)
    message = await raw.parse()
    assert message == checked
    assert message._request_id == raw.http_response.headers["request-id"]
    assert message._request_id == raw.http_response.headers["x-request-id"]
    return message


@dataclass
class StartSignallingEngine(DirectedEngine):
    """Sets ``started`` when a generation is asked of it: the scheduler has given the
    request a slot."""

    started: anyio.Event = field(default_factory=anyio.Event)

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        self.started.set()
        return super().generate(request)


def picolm_like() -> StartSignallingEngine:
    """A directed engine that holds a reply to a schema as PicoLM does (its JSON mode)
    and counts a prompt's tokens as PicoLM does with the model's vocabulary: the engine
    the PicoLM server had, without its process."""
    engine = StartSignallingEngine(abilities=replace(SCHEMA_ABILITIES, tokenize=True))
    engine.model = replace(engine.model, id=PICOLM_MODEL, context_length=CONTEXT_LENGTH)
    return engine


@pytest.fixture
async def server() -> AsyncIterator[InProcessServer]:
    async with serve_in_process(picolm_like()) as server:
        yield server


@pytest.fixture
def client(server: InProcessServer) -> anthropic.AsyncAnthropic:
    return server.anthropic(max_retries=0)


async def post(server: InProcessServer, body: Any, path: str = "/v1/messages") -> httpx.Response:
    """``body`` as JSON, or as raw bytes (malformed JSON), with the server's key."""
    payload = {"content": body} if isinstance(body, bytes) else {"json": body}
    return await server.http().post(path, headers={"x-api-key": server.api_key}, **payload)


async def raw_stream(
    server: InProcessServer, body: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """A streamed request's events, each checked strictly against the SDK's types."""
    response = await post(server, {**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert_request_id(response)
    events = []
    for name, data in anthropic_types.parse_sse(response.content):
        anthropic_types.stream_event(name, data)
        events.append((name, json.loads(data)))
    assert events[0][1]["message"]["id"].startswith("msg_")
    return events


def prompt_with(server: InProcessServer, marker: str) -> str:
    """The prompt of the last generation whose prompt holds ``marker``."""
    prompts = [request.prompt for request in server.engine.requests if marker in request.prompt]
    assert prompts, f"no generation was given {marker!r}"
    return prompts[-1]


pytestmark = pytest.mark.anyio


# ---- messages ------------------------------------------------------------------------------


# A text reply with every optional field a client commonly sends, and what it must be.
GREETING: dict[str, Any] = {
    "model": PICOLM_MODEL,
    "max_tokens": 40,
    "system": "You are terse.",
    "messages": user("Hi [[reply:Hello there, friend.]]"),
    "temperature": 0.5,
    "top_p": 0.9,
    "metadata": {"user_id": "u-1"},
}


def assert_greeting(message: anthropic.types.Message) -> None:
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant"
    assert message.model == PICOLM_MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello there, friend."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.usage.cache_read_input_tokens == 0


async def test_create_text(client: anthropic.AsyncAnthropic, server: InProcessServer) -> None:
    message = await create(client, **GREETING)
    assert_greeting(message)
    # The usage is the engine's own count of the prompt the template made.
    (request,) = server.engine.requests
    assert message.usage.input_tokens == prompt_token_count(request.prompt)
    assert (request.temperature, request.top_p) == (0.5, 0.9)


async def test_system_as_blocks_and_content_as_blocks(
    client: anthropic.AsyncAnthropic, server: InProcessServer
) -> None:
    marker = tag()
    await create(
        client,
        model=PICOLM_MODEL,
        max_tokens=20,
        system=[{"type": "text", "text": f"Rule {marker}."}, {"type": "text", "text": "Two."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Part one."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Noted."}]},
            {"role": "user", "content": [{"type": "text", "text": "[[reply:ok]]"}]},
        ],
    )
    prompt = prompt_with(server, marker)
    assert f"Rule {marker}.\nTwo." in prompt
    assert prompt.index("Part one.") < prompt.index("Noted.") < prompt.index("[[reply:ok]]")


async def test_max_tokens_ends_with_max_tokens(client: anthropic.AsyncAnthropic) -> None:
    message = await create(
        client,
        model=PICOLM_MODEL,
        max_tokens=3,
        messages=user("[[reply:one two three four five six seven]]"),
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3
    assert message.content[0].text == "one two three"  # type: ignore[union-attr]


async def test_stop_sequences(client: anthropic.AsyncAnthropic, server: InProcessServer) -> None:
    params: dict[str, Any] = {
        "model": PICOLM_MODEL,
        "max_tokens": 40,
        "messages": user("[[reply:alpha beta gamma delta]]"),
        "stop_sequences": ["zeta", "gamma"],
    }
    message = await create(client, **params)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "gamma"
    assert message.content[0].text == "alpha beta "  # type: ignore[union-attr]
    events = await raw_stream(server, params)
    assert_sequence(events)
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "gamma"}
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "alpha beta "


STREAMED_TEXT = "Streams arrive piece by piece."


def assert_streamed(
    pieces: list[str],
    final: anthropic.types.Message,
    whole: anthropic.types.Message,
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    """A reply of :data:`STREAMED_TEXT` as the SDK's text stream gave it (``pieces``,
    ``final``), as a whole (``whole``) and as raw events: the same text and counts."""
    assert len(pieces) > 1
    assert "".join(pieces) == STREAMED_TEXT
    assert final.content[0].text == STREAMED_TEXT  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert_sequence(events)
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] == whole.usage.input_tokens
    assert events[-2][1]["usage"]["output_tokens"] == whole.usage.output_tokens


async def test_stream_text_with_the_sdk(
    client: anthropic.AsyncAnthropic, server: InProcessServer
) -> None:
    params: dict[str, Any] = {
        "model": PICOLM_MODEL,
        "max_tokens": 40,
        "messages": user(f"[[reply:{STREAMED_TEXT}]]"),
    }
    async with client.messages.stream(**sdk_params(params)) as stream:
        pieces = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    whole = await create(client, **params)
    assert_streamed(pieces, final, whole, await raw_stream(server, params))


async def test_empty_reply_streams_no_block(server: InProcessServer) -> None:
    """A reply that ends at once: message_start, message_delta, message_stop, and the
    non-streamed message has no content block."""
    params = {"model": PICOLM_MODEL, "max_tokens": 10, "messages": user("[[eos-now]]")}
    events = await raw_stream(server, params)
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    response = await post(server, params)
    assert response.status_code == 200, response.text
    message = anthropic_types.message(response.content)
    assert message.content == []
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 0


# ---- tools ---------------------------------------------------------------------------------

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
async def test_tool_choice_makes_calls(
    client: anthropic.AsyncAnthropic, server: InProcessServer, choice: dict[str, Any], reply: str
) -> None:
    params: dict[str, Any] = {
        "model": PICOLM_MODEL,
        "max_tokens": 40,
        "temperature": 0,
        "tools": TOOLS,
        "tool_choice": choice,
        "messages": user(f"Do it [[reply:{reply}]]"),
    }
    message = await create(client, **params)
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
    async with client.messages.stream(**sdk_params(params)) as stream:
        final = await stream.get_final_message()
    streamed = [block for block in final.content if block.type == "tool_use"]
    assert [(c.name, c.input) for c in streamed] == [(c.name, c.input) for c in calls]
    assert final.stop_reason == "tool_use"
    events = await raw_stream(server, params)
    assert_sequence(events)
    kinds = {d["delta"]["type"] for n, d in events if n == "content_block_delta"}
    assert "input_json_delta" in kinds
    (start,) = [d for n, d in events if n == "content_block_start"]
    assert start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["input"] == {}
    assert start["content_block"]["name"] == calls[0].name
    joined = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert json.loads(joined) == calls[0].input
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_tool_choice_auto_may_answer_in_text(client: anthropic.AsyncAnthropic) -> None:
    message = await create(
        client,
        model=PICOLM_MODEL,
        max_tokens=40,
        tools=TOOLS,
        tool_choice={"type": "auto"},
        messages=user("[[reply:No tool needed.]]"),
    )
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "No tool needed."  # type: ignore[union-attr]


async def test_tool_choice_none_shows_no_tools(
    client: anthropic.AsyncAnthropic, server: InProcessServer
) -> None:
    marker = tag()
    message = await create(
        client,
        model=PICOLM_MODEL,
        max_tokens=40,
        tools=TOOLS,
        tool_choice={"type": "none"},
        messages=user(f"{marker} [[reply:{CALL}]]"),
    )
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert "Get the current weather" not in prompt_with(server, marker)
    # The tools are shown when the choice lets the model use them.
    await create(
        client,
        model=PICOLM_MODEL,
        max_tokens=40,
        tools=TOOLS,
        messages=user(f"{marker} [[reply:ok]]"),
    )
    assert "Get the current weather" in prompt_with(server, marker)


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
async def test_tool_round_trip(
    client: anthropic.AsyncAnthropic,
    server: InProcessServer,
    result: Any,
    is_error: bool | None,
    seen: str,
) -> None:
    marker = tag()
    first = await create(
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
    second = await create(
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
    prompt = prompt_with(server, marker)
    assert seen in prompt
    assert prompt.index('"city": "Paris"') < prompt.index(seen) < prompt.index(marker)


# ---- count_tokens ----------------------------------------------------------------------------


async def test_count_tokens_equals_the_prompt_tokens_reported(
    client: anthropic.AsyncAnthropic, server: InProcessServer
) -> None:
    params: dict[str, Any] = {
        "model": PICOLM_MODEL,
        "system": "Be brief.",
        "tools": TOOLS,
        "messages": user("Count me [[reply:ok]]"),
    }
    raw = await client.messages.with_raw_response.count_tokens(**params)
    counted = anthropic_types.tokens_count(raw.http_response.content).input_tokens
    assert_request_id(raw.http_response)  # type: ignore[arg-type]
    message = await create(client, max_tokens=10, **params)
    usage = message.usage
    assert counted == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    assert counted == prompt_token_count(server.engine.requests[-1].prompt)
    without_tools = await client.messages.count_tokens(
        model=PICOLM_MODEL, messages=user("Count me [[reply:ok]]")
    )
    assert 0 < without_tools.input_tokens < counted
    # Counting generates nothing.
    assert len(server.engine.requests) == 1


# ---- auth ----------------------------------------------------------------------------------


async def test_x_api_key_and_bearer_are_both_accepted(server: InProcessServer) -> None:
    params: dict[str, Any] = {
        "model": PICOLM_MODEL,
        "max_tokens": 10,
        "messages": user("[[reply:in]]"),
    }
    by_key = server.anthropic(max_retries=0)
    assert (await create(by_key, **params)).content[0].text == "in"  # type: ignore[union-attr]
    by_token = server.anthropic(api_key=None, auth_token=server.api_key, max_retries=0)
    assert (await create(by_token, **params)).content[0].text == "in"  # type: ignore[union-attr]
    # The OpenAI routes take x-api-key too.
    response = await server.http().get("/v1/models", headers={"x-api-key": server.api_key})
    assert response.status_code == 200


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}])
async def test_missing_or_wrong_key_is_authentication_error(
    server: InProcessServer, headers: dict[str, str]
) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = await server.http().post(path, json={}, headers=headers)
        assert_error(response, 401, "authentication_error")
    wrong = server.anthropic(api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await wrong.messages.create(model=PICOLM_MODEL, max_tokens=5, messages=user("x"))  # type: ignore[arg-type]
    assert caught.value.request_id
    assert caught.value.body["request_id"] == caught.value.request_id  # type: ignore[index]
    assert server.engine.requests == []


# ---- errors ----------------------------------------------------------------------------------


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
async def test_invalid_requests_are_named(
    server: InProcessServer, body: dict[str, Any], named: str
) -> None:
    message = assert_error(await post(server, body), 400, "invalid_request_error")
    assert named in message
    # Refused before any generation, streamed or not.
    streamed = await post(server, {**body, "stream": True})
    assert assert_error(streamed, 400, "invalid_request_error") == message
    assert server.engine.requests == []


async def test_invalid_request_through_the_sdk(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(**sdk_params({**BASE, "temperature": 1.5}))
    assert caught.value.status_code == 400
    assert "temperature" in caught.value.message
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


async def test_thinking_disabled_is_accepted(server: InProcessServer) -> None:
    response = await post(
        server, {**BASE, "messages": user("[[reply:ok]]"), "thinking": {"type": "disabled"}}
    )
    assert response.status_code == 200, response.text
    assert anthropic_types.message(response.content).content[0].text == "ok"  # type: ignore[union-attr]


async def test_malformed_json_and_unknown_model_and_path(
    server: InProcessServer, client: anthropic.AsyncAnthropic
) -> None:
    assert_error(await post(server, b'{"model": '), 400, "invalid_request_error")
    unknown = await post(server, {**BASE, "model": "nope"})
    assert "nope" in assert_error(unknown, 404, "not_found_error")
    counted = await post(
        server, {"model": "nope", "messages": user("x")}, "/v1/messages/count_tokens"
    )
    assert_error(counted, 404, "not_found_error")
    assert_error(await post(server, BASE, "/v1/messages/nothing"), 404, "not_found_error")
    response = await server.http().get("/v1/messages", headers={"x-api-key": server.api_key})
    assert_error(response, 405, "invalid_request_error")
    assert "POST" in response.headers["allow"]
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.create(model="nope", max_tokens=5, messages=user("x"))  # type: ignore[arg-type]


async def test_openai_routes_keep_openais_envelope(server: InProcessServer) -> None:
    response = await server.http().post(
        "/v1/chat/completions",
        json={"model": "nope", "messages": user("x")},
        headers={"x-api-key": server.api_key},
    )
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert "request-id" not in response.headers


async def test_engine_failure(server: InProcessServer, client: anthropic.AsyncAnthropic) -> None:
    body = {**BASE, "messages": user("[[crash]]")}
    message = assert_error(await post(server, body), 500, "api_error")
    assert message == "The scripted engine failed."
    response = await post(server, {**body, "stream": True})
    assert response.status_code == 200
    request_id = assert_request_id(response)
    events = anthropic_types.parse_sse(response.content)
    # The tokens before the failure were sent; the stream ends with the error event.
    assert events[0][0] == "message_start"
    assert "message_stop" not in [name for name, _ in events]
    name, data = events[-1]
    assert name == "error"
    error = anthropic_types.stream_event(name, data)
    assert error.error.type == "api_error"
    assert error.error.message == "The scripted engine failed."
    assert json.loads(data)["request_id"] == request_id
    with pytest.raises(anthropic.APIStatusError):
        async with client.messages.stream(**sdk_params(body)) as stream:
            await stream.get_final_message()
    # One request failed; the next is served.
    ok = await create(client, **{**BASE, "messages": user("[[reply:ok]]")})
    assert ok.content[0].text == "ok"  # type: ignore[union-attr]


async def test_queue_full_is_rate_limit_error_with_retry_after() -> None:
    """One generation at a time and no queue: a second request is refused at once."""
    engine = picolm_like()
    async with serve_in_process(engine, server={"max_queue": 0}) as server:
        body = {"model": PICOLM_MODEL, "max_tokens": 500, "messages": user("[[hang]]")}
        async with anyio.create_task_group() as running:
            running.start_soon(post, server, {**body, "stream": True})
            # The engine is given the first request once it holds the one slot.
            await engine.started.wait()
            health = (await server.http().get("/health")).json()
            assert health["running"] == 1
            response = await post(server, {**body, "stream": False})
            assert_error(response, 429, "rate_limit_error")
            assert int(response.headers["retry-after"]) >= 1
            client = server.anthropic(max_retries=0)
            with pytest.raises(anthropic.RateLimitError):
                await client.messages.create(**sdk_params(body))
            assert len(server.engine.requests) == 1
            running.cancel_scope.cancel()
        # The generation that held the slot ended with its request.
        assert server.engine.closed == 1
