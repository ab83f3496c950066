"""Tool calls and structured output on the wire, through the official openai SDK (and raw
httpx where the bytes are the point), on the application in-process over a scripted
engine: the reply text the engine writes is read by the core into content and calls,
as a real model's would be. Two engines: one that takes a grammar (llama.cpp's kind, the
Hermes ``<tool_call>`` format on a ChatML template) and one that writes JSON without a
grammar (PicoLM's kind, calls as bare JSON). What the real SmolLM2 does under the grammar
is in test_tool_calls_http_on_llama.py; what the PicoLM engine writes and what reaches
its process, in test_tool_calls_http_on_picolm.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import jsonschema
import openai
import pytest

from picolm_server.engines.base import EngineAbilities
from tests.support.inprocess import InProcessServer, serve_in_process
from tests.support.openapi import check_schema
from tests.support.picolm_setup import MODEL_ID
from tests.support.scripted_engine import (
    GRAMMAR_ABILITIES,
    SCHEMA_ABILITIES,
    DirectedEngine,
    engine_of_kind,
)
from tests.tool_calls.test_tool_calls import WEATHER

WEATHER_PARAMS = WEATHER["function"]["parameters"]
EMAIL_PARAMS = {
    "type": "object",
    "properties": {
        "to": {"type": "string"},
        "subject": {"type": "string"},
        "urgent": {"type": "boolean"},
    },
    "required": ["to", "subject"],
}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": WEATHER_PARAMS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "send_email",
            "description": "Send an email",
            "parameters": EMAIL_PARAMS,
            "strict": True,
        },
    },
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "send_email": EMAIL_PARAMS}
NAMED_EMAIL = {"type": "function", "function": {"name": "send_email"}}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "hobbies"],
    "additionalProperties": False,
}
PERSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "strict": True, "schema": PERSON},
}


def assert_valid_calls(message: Any, allowed: set[str]) -> list[Any]:
    calls = message.tool_calls or []
    for call in calls:
        assert call.type == "function"
        assert call.id.startswith("call_")
        assert call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({call.id for call in calls}) == len(calls)
    return calls


def reassemble(stream: Iterable[Any]) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """Content, calls and finish_reason from stream chunks, checking OpenAI's delta rules."""
    content: str | None = None
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        if delta.content:
            content = (content or "") + delta.content
        for part in delta.tool_calls or []:
            if part.index not in calls:
                # The first delta of a call carries its id, type and name.
                assert part.id and part.type == "function" and part.function.name
                calls[part.index] = {
                    "id": part.id,
                    "name": part.function.name,
                    "arguments": part.function.arguments or "",
                }
            else:
                assert part.id is None and part.function.name is None
                calls[part.index]["arguments"] += part.function.arguments or ""
        if choice.finish_reason:
            finish = choice.finish_reason
    return content, [calls[i] for i in sorted(calls)], finish


async def reassemble_async(
    stream: AsyncIterator[Any],
) -> tuple[str | None, list[dict[str, Any]], str | None]:
    return reassemble([chunk async for chunk in stream])


def plain(calls: Any) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in calls]


def content_deltas(stream: Iterable[Any]) -> list[str]:
    return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]


def sse_payloads(text: str) -> list[str]:
    events = [event for event in text.split("\n\n") if event.strip()]
    assert all(event.startswith("data: ") for event in events), events
    return [event[len("data: ") :] for event in events]


# ---- the two kinds of engine --------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """An engine kind, and how its model writes a call (``call``) and a named call's
    arguments (``named``): under a grammar the Hermes block; without one bare JSON, and
    a named call's arguments only."""

    name: str
    abilities: EngineAbilities

    @property
    def grammar(self) -> bool:
        return self.abilities.grammar

    def call(self, name: str, arguments: dict[str, Any]) -> str:
        body = json.dumps({"name": name, "arguments": arguments})
        return f"<tool_call>{body}</tool_call>" if self.grammar else body

    def named(self, name: str, arguments: dict[str, Any]) -> str:
        return self.call(name, arguments) if self.grammar else json.dumps(arguments)


GRAMMAR = Kind("grammar", GRAMMAR_ABILITIES)
SCHEMA = Kind("schema", SCHEMA_ABILITIES)


def tool_engine(abilities: EngineAbilities) -> DirectedEngine:
    return engine_of_kind(abilities, MODEL_ID)


@pytest.fixture(params=[GRAMMAR, SCHEMA], ids=lambda kind: kind.name)
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def server(kind: Kind) -> AsyncIterator[InProcessServer]:
    async with serve_in_process(tool_engine(kind.abilities), picolm={"max_tokens": 64}) as app:
        yield app


@pytest.fixture
def client(server: InProcessServer) -> openai.AsyncOpenAI:
    return server.client(max_retries=0)


def directed(reply: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Do it [[reply:{reply}]]"}]


async def ask(client: openai.AsyncOpenAI, reply: str, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"tools": TOOLS, "temperature": 0, "max_tokens": 40}
    params.update(kwargs)
    return await client.chat.completions.create(model=MODEL_ID, messages=directed(reply), **params)


pytestmark = pytest.mark.anyio


# ---- calls in whole replies -----------------------------------------------------------------


async def test_required_call(
    server: InProcessServer, client: openai.AsyncOpenAI, kind: Kind
) -> None:
    reply = kind.call("get_weather", {"city": "Paris", "unit": "celsius"})
    choice = (await ask(client, reply, tool_choice="required")).choices[0]
    calls = assert_valid_calls(choice.message, {"get_weather", "send_email"})
    assert plain(calls) == [("get_weather", '{"city":"Paris","unit":"celsius"}')]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    # The engine is held to the call: by a grammar, or (without one) by JSON mode.
    constraint = server.engine.requests[-1].constraint
    assert constraint is not None
    assert (constraint.gbnf is not None) is kind.grammar


async def test_named_call(client: openai.AsyncOpenAI, kind: Kind) -> None:
    reply = kind.named("send_email", {"to": "ann@example.com", "subject": "Hello"})
    choice = (await ask(client, reply, tool_choice=NAMED_EMAIL)).choices[0]
    assert plain(choice.message.tool_calls) == [
        ("send_email", '{"to":"ann@example.com","subject":"Hello"}')
    ]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None


async def test_a_call_on_the_wire_is_openais_shape(server: InProcessServer, kind: Kind) -> None:
    reply = kind.call("get_weather", {"city": "Paris"})
    response = await server.http().post(
        "/v1/chat/completions",
        json={
            "model": MODEL_ID,
            "messages": directed(reply),
            "tools": TOOLS,
            "tool_choice": "required",
            "temperature": 0,
        },
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    check_schema(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] is None
    [call] = message["tool_calls"]
    assert set(call) == {"id", "type", "function"}
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}


async def test_auto_call(client: openai.AsyncOpenAI, kind: Kind) -> None:
    reply = kind.call("send_email", {"to": "a@b.c", "subject": "s", "urgent": True})
    choice = (await ask(client, reply, tool_choice="auto")).choices[0]
    assert plain(choice.message.tool_calls) == [
        ("send_email", '{"to":"a@b.c","subject":"s","urgent":true}')
    ]
    assert choice.finish_reason == "tool_calls"


@pytest.mark.parametrize("choice", ["auto", None])
async def test_auto_text_is_content(client: openai.AsyncOpenAI, choice: str | None) -> None:
    kwargs = {"tool_choice": choice} if choice else {}
    message = (await ask(client, "Sunny all day.", **kwargs)).choices[0]
    assert message.message.tool_calls is None
    assert message.message.content == "Sunny all day."
    assert message.finish_reason == "stop"


@pytest.mark.parametrize(
    "reply",
    ["Sunny all day.", "{not json at all", '{"name": "get_weather", "arguments": {"town": "x"}}'],
)
async def test_auto_returns_text_and_bad_calls_as_content(reply: str) -> None:
    # Without a grammar a call-shaped reply that does not validate is the model's text.
    async with serve_in_process(tool_engine(SCHEMA_ABILITIES)) as server:
        choice = (await ask(server.client(max_retries=0), reply)).choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content == reply
    assert choice.finish_reason == "stop"


async def test_none_never_calls(
    server: InProcessServer, client: openai.AsyncOpenAI, kind: Kind
) -> None:
    reply = kind.call("get_weather", {"city": "Paris"})
    choice = (await ask(client, reply, tool_choice="none")).choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content == reply
    assert choice.finish_reason == "stop"
    # The tools are not shown to the model at all, and nothing holds its reply.
    request = server.engine.requests[-1]
    assert "Get the current weather" not in request.prompt
    assert request.constraint is None


async def test_parallel_calls() -> None:
    paris = GRAMMAR.call("get_weather", {"city": "Paris"})
    berlin = GRAMMAR.call("get_weather", {"city": "Berlin"})
    async with serve_in_process(tool_engine(GRAMMAR_ABILITIES)) as grammar_server:
        grammar_client = grammar_server.client(max_retries=0)
        choice = (
            await ask(grammar_client, f"{paris}\n{berlin}", tool_choice="required", tools=TOOLS[:1])
        ).choices[0]
        calls = assert_valid_calls(choice.message, {"get_weather"})
        assert plain(calls) == [
            ("get_weather", '{"city":"Paris"}'),
            ("get_weather", '{"city":"Berlin"}'),
        ]
        assert choice.finish_reason == "tool_calls"
        assert '("\\n" call)*' in (grammar_server.engine.requests[-1].constraint.gbnf or "")
        # A repeat ends the reply: it is cut, not returned.
        looped = f"{paris}\n{berlin}\n{paris}\n{berlin}"
        choice = (
            await ask(grammar_client, looped, tool_choice="required", tools=TOOLS[:1])
        ).choices[0]
        assert len(set(plain(choice.message.tool_calls))) == len(choice.message.tool_calls) == 2
        # parallel_tool_calls=False: the grammar allows one call.
        single = (
            await ask(
                grammar_client,
                paris,
                tool_choice="required",
                tools=TOOLS[:1],
                parallel_tool_calls=False,
            )
        ).choices[0]
        assert len(assert_valid_calls(single.message, {"get_weather"})) == 1
        gbnf = grammar_server.engine.requests[-1].constraint.gbnf or ""
        assert gbnf and '("\\n" call)*' not in gbnf


# ---- streamed calls -------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["required", NAMED_EMAIL, "auto", "text"])
async def test_streamed_calls_reassemble_exactly(
    client: openai.AsyncOpenAI, kind: Kind, choice: Any
) -> None:
    if choice == "required":
        reply = kind.call("get_weather", {"city": "Rome"})
    elif choice is NAMED_EMAIL:
        reply = kind.named("send_email", {"to": "x@y.z", "subject": "streamed"})
    elif choice == "auto":
        reply = kind.call("send_email", {"to": "ann@example.com", "subject": "Oslo weather"})
    else:
        choice, reply = "auto", "Just words here."
    whole = (await ask(client, reply, tool_choice=choice)).choices[0]
    content, calls, finish = await reassemble_async(
        await ask(client, reply, tool_choice=choice, stream=True)
    )
    assert finish == whole.finish_reason
    assert content == whole.message.content
    assert [(c["name"], c["arguments"]) for c in calls] == plain(whole.message.tool_calls or [])
    assert (whole.message.tool_calls is None) is (reply == "Just words here.")


async def test_streamed_call_deltas_on_the_wire(server: InProcessServer, kind: Kind) -> None:
    arguments = {"to": "ann@example.com", "subject": "The weather in Oslo tomorrow morning"}
    response = await server.http().post(
        "/v1/chat/completions",
        json={
            "model": MODEL_ID,
            "messages": directed(kind.call("send_email", arguments)),
            "tools": TOOLS,
            "tool_choice": "required",
            "temperature": 0,
            "stream": True,
        },
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    for chunk in chunks:
        check_schema(chunk, "CreateChatCompletionStreamResponse")
        assert chunk["object"] == "chat.completion.chunk"
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert deltas[0]["role"] == "assistant"
    parts = [part for delta in deltas for part in delta.get("tool_calls") or []]
    first, *rest = parts
    assert first["index"] == 0 and first["type"] == "function"
    assert first["id"].startswith("call_") and first["function"]["name"] == "send_email"
    # The arguments arrive in pieces, each delta after the first with index and text only.
    assert len(rest) > 1
    for part in rest:
        assert part["index"] == 0 and "id" not in part and set(part["function"]) == {"arguments"}
    text = "".join(part["function"].get("arguments", "") for part in parts)
    assert json.loads(text) == arguments
    assert all(delta.get("content") is None for delta in deltas)
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]]
    assert finishes[-1] == "tool_calls" and not any(finishes[:-1])


async def test_an_engine_failure_in_a_stream_is_reported_in_band(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "[[crash]]"}],
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        stream=True,
    )
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert "The scripted engine failed." in str(caught.value)


# ---- conversations with tool results ---------------------------------------------------------


def with_result(result: str, call: str = '{"city": "Paris"}') -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": result},
    ]


async def test_tool_results_are_fed_back(
    server: InProcessServer, client: openai.AsyncOpenAI, kind: Kind
) -> None:
    messages = with_result("Sunny, 24 degrees celsius [[reply:It is sunny in Paris.]]")
    for choice in ("none", "auto"):
        completion = await client.chat.completions.create(
            model=MODEL_ID, messages=messages, tools=TOOLS, tool_choice=choice, temperature=0
        )
        assert completion.choices[0].message.tool_calls is None
        assert completion.choices[0].message.content == "It is sunny in Paris."
        # The model is shown its own call and the result it got.
        prompt = server.engine.requests[-1].prompt
        assert "Sunny, 24 degrees celsius" in prompt
        if kind.grammar:
            assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
            assert "<tool_response>" in prompt
        else:
            assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
            assert "Result of get_weather: Sunny" in prompt


@pytest.mark.parametrize(
    "reply",
    [
        "<tool_response>22 degrees and raining</tool_response> Take an umbrella.",
        "<tool_response>\n-3C, snow\n</tool_response>",
    ],
)
async def test_the_answer_after_a_tool_result_does_not_echo_its_wrapper(
    client: openai.AsyncOpenAI, reply: str
) -> None:
    params: dict[str, Any] = {
        "model": MODEL_ID,
        "messages": with_result(f"a result [[reply:{reply}]]"),
        "tools": TOOLS[:1],
        "temperature": 0,
    }
    whole = (await client.chat.completions.create(**params)).choices[0].message
    streamed, calls, _ = await reassemble_async(
        await client.chat.completions.create(stream=True, **params)
    )
    assert not calls and whole.tool_calls is None
    assert whole.content and streamed == whole.content
    assert "<tool_response>" not in whole.content and "</tool_response>" not in whole.content
    inner = reply.removeprefix("<tool_response>").split("</tool_response>")[0].strip()
    assert inner in whole.content


# ---- JSON replies ---------------------------------------------------------------------------

GOOD_PERSON = '{"name": "Ann", "age": 30, "hobbies": ["chess", "go"]}'


@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_replies_validate(
    server: InProcessServer, client: openai.AsyncOpenAI, stream: bool
) -> None:
    params: dict[str, Any] = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": f"Describe Ann [[reply:{GOOD_PERSON}]]"}],
        "response_format": PERSON_FORMAT,
        "temperature": 0,
    }
    if stream:
        chunks = await client.chat.completions.create(stream=True, **params)
        content, calls, finish = await reassemble_async(chunks)
        assert not calls
    else:
        choice = (await client.chat.completions.create(**params)).choices[0]
        content, finish = choice.message.content, choice.finish_reason
    assert finish == "stop"
    assert content == GOOD_PERSON
    jsonschema.validate(json.loads(content or ""), PERSON)
    constraint = server.engine.requests[-1].constraint
    assert constraint is not None and constraint.json_schema == PERSON


async def test_json_replies_stream_in_pieces_that_join_to_the_whole_reply(
    client: openai.AsyncOpenAI,
) -> None:
    params: dict[str, Any] = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": f"Describe Ann [[reply:{GOOD_PERSON}]]"}],
        "response_format": PERSON_FORMAT,
        "temperature": 0,
    }
    whole = (await client.chat.completions.create(**params)).choices[0].message.content
    chunks = await client.chat.completions.create(stream=True, **params)
    pieces = content_deltas([chunk async for chunk in chunks])
    assert len(pieces) > 3  # not one delta at the end
    assert "".join(pieces) == whole == GOOD_PERSON


async def test_a_json_reply_that_breaks_its_schema_is_an_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": '[[reply:{"name": "Ann"}]]'}],
            response_format=PERSON_FORMAT,
            temperature=0,
        )
    assert caught.value.body["code"] == "invalid_model_output"  # type: ignore[index]


async def test_json_object_replies_parse(client: openai.AsyncOpenAI) -> None:
    choice = (
        await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": '[[reply:{"cats": ["Tom", "Felix"]}]]'}],
            response_format={"type": "json_object"},
            temperature=0,
        )
    ).choices[0]
    assert choice.finish_reason == "stop"
    assert json.loads(choice.message.content or "") == {"cats": ["Tom", "Felix"]}


# ---- refusals and errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "strict": True, "schema": {"type": "nope"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        (
            {
                "tools": TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "missing"}},
            },
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "array"}},
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
    ],
)
async def test_bad_tools_and_formats_are_400s_naming_the_param(
    server: InProcessServer, client: openai.AsyncOpenAI, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], **params
        )
    assert caught.value.body["param"] == param  # type: ignore[index]
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert not server.engine.requests  # refused before the engine runs


async def test_a_forced_call_the_model_got_wrong_is_a_500_not_to_retry(
    server: InProcessServer, kind: Kind
) -> None:
    response = await server.http().post(
        "/v1/chat/completions",
        json={
            "model": MODEL_ID,
            "messages": directed("this is not json"),
            "tools": TOOLS,
            "tool_choice": "required",
            "temperature": 0,
        },
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "invalid_model_output"
    assert response.json()["error"]["type"] == "server_error"
    assert response.headers["x-should-retry"] == "false"  # greedy: a retry repeats it


async def test_a_schema_the_grammar_cannot_enforce_never_yields_an_invalid_call() -> None:
    # The grammar cannot express "multipleOf" (it holds numbers to their bounds, not to
    # this); the server's validation must catch it.
    params = {
        "type": "object",
        "properties": {"n": {"type": "integer", "multipleOf": 1000003}},
        "required": ["n"],
    }
    body = {
        "model": MODEL_ID,
        "messages": directed(GRAMMAR.call("pick", {"n": 7})),
        "tools": [{"type": "function", "function": {"name": "pick", "parameters": params}}],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 30,
    }
    async with serve_in_process(tool_engine(GRAMMAR_ABILITIES)) as server:
        response = await server.http().post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {server.api_key}"}
        )
        assert server.engine.requests[-1].constraint.gbnf  # type: ignore[union-attr]
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "invalid_model_output"
    assert "multiple" in error["message"]
    assert response.headers["x-should-retry"] == "false"  # greedy: a retry repeats it
