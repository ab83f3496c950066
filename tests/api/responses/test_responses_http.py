"""The Responses API through the openai SDK (and raw httpx where the bytes are the
point), on the application in-process over a scripted engine that replies as the prompt
directs, every object and stream event checked against the spec and the SDK's types.
The end-to-end smoke on a real server process is test_responses_http_on_picolm.py; the
real SmolLM2 speaks the Responses API in test_agents_sdk.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.api.responses.shapes import check_event, check_response, sse_events
from tests.api.responses.targets import serve_responses
from tests.support.inprocess import InProcessServer
from tests.support.openapi import check_schema
from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL

pytestmark = pytest.mark.anyio

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
# A second tool: with one tool and "required", PicoLM is asked for that tool's arguments.
EMAIL_TOOL = {
    "type": "function",
    "name": "send_email",
    "description": "Send an email",
    "parameters": {
        "type": "object",
        "properties": {"to": {"type": "string"}, "subject": {"type": "string"}},
        "required": ["to", "subject"],
    },
}


def scripted(reply: str) -> str:
    """What makes the scripted engine write ``reply``."""
    return f" [[reply:{reply}]]"


def prompt_with(server: InProcessServer, marker: str) -> str:
    """The prompt of the last generation whose prompt holds ``marker``."""
    prompts = [request.prompt for request in server.engine.requests if marker in request.prompt]
    assert prompts, marker
    return prompts[-1]


async def raw_create(client: openai.AsyncOpenAI, **params: Any) -> tuple[dict[str, Any], Any]:
    """The response's JSON as sent, checked, and as the SDK parses it."""
    raw = await client.responses.with_raw_response.create(**params)
    body = raw.http_response.json()
    check_response(body)
    return body, raw.parse()


async def post(server: InProcessServer, body: dict[str, Any]) -> httpx.Response:
    return await server.http().post("/v1/responses", json=body)


def check_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    check_schema(body, "ErrorResponse")
    assert body["error"]["param"] == param
    return body["error"]


async def test_create_retrieve_list_delete(responses_app: InProcessServer) -> None:
    client = responses_app.client(max_retries=0)
    body, response = await raw_create(
        client,
        model=PICOLM_MODEL,
        instructions="Answer in one short sentence.",
        input="What is the capital of France?" + scripted("Paris is the capital."),
        max_output_tokens=12,
        temperature=0,
    )
    assert response.output_text == "Paris is the capital."
    assert response.status == "completed"
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0

    retrieved = await client.responses.with_raw_response.retrieve(response.id)
    assert retrieved.http_response.json() == body
    items = await client.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    assert items.data[0].content[0].text.startswith("What is the capital of France?")

    deleted = await responses_app.http().delete(f"/v1/responses/{response.id}")
    assert deleted.json() == {"id": response.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)


async def test_sdk_delete(responses_app: InProcessServer) -> None:
    client = responses_app.client(max_retries=0)
    response = await client.responses.create(model=PICOLM_MODEL, input="x" + scripted("y"))
    assert await client.responses.delete(response.id) is None
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(response.id)


async def test_stream_events_in_order_and_valid(responses_app: InProcessServer) -> None:
    body = {
        "model": PICOLM_MODEL,
        "input": "Say hello." + scripted("Hello there, my friend, how are you on this fine day?"),
        "max_output_tokens": 8,
        "temperature": 0,
        "stream": True,
    }
    response = await post(responses_app, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    for event in events:
        check_event(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    kinds = [event["type"] for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    deltas = "".join(event["delta"] for event in events if event["type"].endswith("text.delta"))
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == deltas == events[-4]["text"]
    # The scripted reply is longer than max_output_tokens: cut, so incomplete.
    assert kinds[-1] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"


async def test_sdk_stream_helper(responses_app: InProcessServer) -> None:
    client = responses_app.client(max_retries=0)
    async with client.responses.stream(
        model=PICOLM_MODEL,
        input="Name a colour." + scripted("Blue."),
        max_output_tokens=8,
        temperature=0,
    ) as stream:
        events = [event async for event in stream]
        # get_final_response() is the SDK's for a completed response.
        final = await stream.get_final_response()
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    last = events[-1]
    assert last.type == "response.completed"
    assert "".join(deltas) == last.response.output_text
    assert last.response.usage is not None and last.response.usage.output_tokens > 0
    assert final.output_text == "Blue."


class City(BaseModel):
    name: str
    country: str


async def test_parse_with_a_pydantic_text_format(responses_app: InProcessServer) -> None:
    client = responses_app.client(max_retries=0)
    raw = await client.responses.with_raw_response.parse(
        model=PICOLM_MODEL,
        input="Give the capital of France as JSON."
        + scripted('{"name": "Paris", "country": "France"}'),
        text_format=City,
        max_output_tokens=40,
        temperature=0,
    )
    check_response(raw.http_response.json())
    parsed = raw.parse().output_parsed
    assert parsed == City(name="Paris", country="France")


async def test_tool_round_trip_with_previous_response_id(responses_app: InProcessServer) -> None:
    client = responses_app.client(max_retries=0)
    call_reply = '{"city": "Paris"}'  # a named call: the model writes the arguments
    first = await client.responses.create(
        model=PICOLM_MODEL,
        input="What is the weather in Paris?" + scripted(call_reply),
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
        temperature=0,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert calls[0].call_id.startswith("call_") and calls[0].status == "completed"

    second = await client.responses.create(
        model=PICOLM_MODEL,
        previous_response_id=first.id,
        input=[
            {
                "type": "function_call_output",
                "call_id": calls[0].call_id,
                "output": "Sunny, 22 C." + scripted("It is sunny in Paris."),
            }
        ],
        tools=[WEATHER_TOOL],
        max_output_tokens=30,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    assert second.output_text == "It is sunny in Paris."
    listed = (
        await responses_app.http().get(f"/v1/responses/{second.id}/input_items?order=asc")
    ).json()
    check_schema(listed, "ResponseItemList")
    items = await client.responses.input_items.list(second.id, order="asc")
    assert [item.id for item in items.data] == [item["id"] for item in listed["data"]]
    assert [item.type for item in items.data] == [
        "message",
        "function_call",
        "function_call_output",
    ]
    prompt = prompt_with(responses_app, "[[reply:It is sunny in Paris.]]")
    # The whole conversation was rendered: the question, the call and its result.
    assert "What is the weather in Paris?" in prompt
    assert "get_weather" in prompt and "Sunny, 22 C." in prompt


@pytest.mark.parametrize(
    ("choice", "reply"),
    [
        ("required", '{"name": "get_weather", "arguments": {"city": "Rome"}}'),
        ("auto", '{"name": "get_weather", "arguments": {"city": "Rome"}}'),
        ({"type": "function", "name": "get_weather"}, '{"city": "Rome"}'),
    ],
)
async def test_tool_choice_modes_call(
    responses_app: InProcessServer, choice: Any, reply: str
) -> None:
    body, response = await raw_create(
        responses_app.client(max_retries=0),
        model=PICOLM_MODEL,
        input="Weather in Rome?" + scripted(reply),
        tools=[WEATHER_TOOL, EMAIL_TOOL],
        tool_choice=choice,
        temperature=0,
    )
    assert [(item.type, item.name, item.arguments) for item in response.output] == [
        ("function_call", "get_weather", '{"city":"Rome"}')
    ]
    assert body["tool_choice"] == choice


async def test_tool_choice_none_answers_in_text(responses_app: InProcessServer) -> None:
    reply = '{"name": "get_weather", "arguments": {"city": "Rome"}}'
    response = await responses_app.client(max_retries=0).responses.create(
        model=PICOLM_MODEL,
        input="Weather in Rome?" + scripted(reply),
        tools=[WEATHER_TOOL, EMAIL_TOOL],
        tool_choice="none",
        temperature=0,
    )
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == reply


async def test_streamed_call_events(responses_app: InProcessServer) -> None:
    reply = '{"name": "get_weather", "arguments": {"city": "Rome"}}'
    response = await post(
        responses_app,
        {
            "model": PICOLM_MODEL,
            "input": "Weather?" + scripted(reply),
            "tools": [WEATHER_TOOL, EMAIL_TOOL],
            "tool_choice": "required",
            "stream": True,
        },
    )
    events = sse_events(response.text)
    for event in events:
        check_event(event)
    kinds = [event["type"] for event in events]
    assert kinds[2] == "response.output_item.added"
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(deltas) == '{"city":"Rome"}' == events[-3]["arguments"]
    assert events[-1]["response"]["output"][0]["call_id"].startswith("call_")


async def test_json_object_format(responses_app: InProcessServer) -> None:
    response = await responses_app.client(max_retries=0).responses.create(
        model=PICOLM_MODEL,
        input="JSON please" + scripted('{"ok": true}'),
        text={"format": {"type": "json_object"}},
        temperature=0,
    )
    assert json.loads(response.output_text) == {"ok": True}


async def test_engine_failure_in_a_stream(responses_app: InProcessServer) -> None:
    response = await post(
        responses_app,
        {"model": PICOLM_MODEL, "input": "[[crash]]", "stream": True, "temperature": 0},
    )
    events = sse_events(response.text)
    for event in events:
        check_event(event)
    assert [event["type"] for event in events][-2:] == ["error", "response.failed"]
    # The engine's own words reach the client (PicoLM's: "exited with status 3").
    assert "The scripted engine failed." in events[-2]["message"]
    assert events[-1]["response"]["status"] == "failed"


async def test_store_false_is_not_kept(responses_app: InProcessServer) -> None:
    client = responses_app.client(max_retries=0)
    response = await client.responses.create(
        model=PICOLM_MODEL, input="x" + scripted("y"), store=False
    )
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)
    error = check_error(
        await post(
            responses_app,
            {"model": PICOLM_MODEL, "input": "more", "previous_response_id": response.id},
        ),
        404,
        "previous_response_id",
    )
    assert error["code"] == "previous_response_not_found"
    assert response.id in error["message"]


async def test_instructions_are_not_carried_over(responses_app: InProcessServer) -> None:
    client = responses_app.client(max_retries=0)
    first = await client.responses.create(
        model=PICOLM_MODEL,
        instructions="SECRET-INSTRUCTION-1",
        input="one" + scripted("first answer"),
    )
    await client.responses.create(
        model=PICOLM_MODEL, previous_response_id=first.id, input="two" + scripted("second answer")
    )
    prompt = prompt_with(responses_app, "[[reply:second answer]]")
    assert "first answer" in prompt and "one" in prompt
    assert "SECRET-INSTRUCTION-1" not in prompt


@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("DELETE", ""), ("GET", "/input_items")]
)
async def test_unknown_ids_are_404(
    responses_app: InProcessServer, method: str, suffix: str
) -> None:
    response = await responses_app.http().request(method, f"/v1/responses/resp_nonexistent{suffix}")
    error = check_error(response, 404, "response_id")
    assert error["message"] == "Response with id 'resp_nonexistent' not found."
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
        ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"model": "gpt-4o"}, "model"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].type",
        ),
    ],
)
async def test_refused_parameters_are_named(
    responses_app: InProcessServer, extra: dict[str, Any], param: str
) -> None:
    body = {"model": PICOLM_MODEL, "input": "hi", **extra}
    status = 404 if param == "model" else 400
    check_error(await post(responses_app, body), status, param)
    assert responses_app.engine.requests == []


async def test_the_store_survives_a_restart(tmp_path: Path) -> None:
    """Two apps, one after the other, on one store file: what the first kept, the
    second serves and continues."""
    store = tmp_path / "store" / "responses.sqlite3"
    async with serve_responses(store) as server:
        client = server.client(max_retries=0)
        raw = await client.responses.with_raw_response.create(
            model=PICOLM_MODEL, input="remember [[reply:kept across restarts]]", temperature=0
        )
        created = raw.http_response.json()
    async with serve_responses(store) as server:
        client = server.client(max_retries=0)
        again = await client.responses.with_raw_response.retrieve(created["id"])
        assert again.http_response.json() == created
        follow = await client.responses.create(
            model=PICOLM_MODEL, previous_response_id=created["id"], input="and? [[reply:ok]]"
        )
        assert follow.output_text == "ok"
        assert "kept across restarts" in prompt_with(server, "[[reply:ok]]")
