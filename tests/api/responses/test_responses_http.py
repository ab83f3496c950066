"""The Responses API over HTTP through the openai SDK, on both engines (SmolLM2 on
llama.cpp, and PicoLM's stand-in with scripted replies), every object and stream event
checked against the spec and the SDK's types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.api.responses.shapes import check_event, check_response, sse_events
from tests.api.responses.targets import TIMEOUT, Target
from tests.support.openapi import check_schema
from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL
from tests.support.picolm_setup import PicoLMFiles

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


def raw_create(client: openai.OpenAI, **params: Any) -> tuple[dict[str, Any], Any]:
    """The response's JSON as sent, checked, and as the SDK parses it."""
    raw = client.responses.with_raw_response.create(**params)
    body = raw.http_response.json()
    check_response(body)
    return body, raw.parse()


def check_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    check_schema(body, "ErrorResponse")
    assert body["error"]["param"] == param
    return body["error"]


# ---- both engines ---------------------------------------------------------------------


def test_create_retrieve_list_delete(target: Target) -> None:
    client = target.client()
    body, response = raw_create(
        client,
        model=target.model,
        instructions="Answer in one short sentence.",
        input="What is the capital of France?" + target.scripted("Paris is the capital."),
        max_output_tokens=12,
        temperature=0,
    )
    assert response.status in ("completed", "incomplete")
    assert response.output_text
    if target.picolm is not None:
        assert response.output_text == "Paris is the capital."
        assert response.status == "completed"
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0

    retrieved = client.responses.with_raw_response.retrieve(response.id).http_response.json()
    assert retrieved == body
    items = client.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    assert items.data[0].content[0].text.startswith("What is the capital of France?")

    deleted = httpx.delete(f"{target.server.openai_base_url}/responses/{response.id}")
    assert deleted.json() == {"id": response.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_stream_events_in_order_and_valid(target: Target) -> None:
    body = {
        "model": target.model,
        "input": "Say hello."
        + target.scripted("Hello there, my friend, how are you on this fine day?"),
        "max_output_tokens": 8,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{target.server.openai_base_url}/responses", json=body, timeout=TIMEOUT
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
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
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(event["delta"] for event in events if event["type"].endswith("text.delta"))
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == deltas == events[-4]["text"]
    if target.picolm is not None:
        # The stand-in's reply is longer than max_output_tokens: cut, so incomplete.
        assert kinds[-1] == "response.incomplete"
        assert final["incomplete_details"] == {"reason": "max_output_tokens"}
        assert final["output"][0]["status"] == "incomplete"


def test_sdk_stream_helper(target: Target) -> None:
    client = target.client()
    with client.responses.stream(
        model=target.model,
        input="Name a colour." + target.scripted("Blue."),
        max_output_tokens=8,
        temperature=0,
    ) as stream:
        events = list(stream)
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    assert "".join(deltas) == last.response.output_text
    assert last.response.usage is not None and last.response.usage.output_tokens > 0
    if target.picolm is not None:
        # get_final_response() is the SDK's for a completed response.
        assert stream.get_final_response().output_text == "Blue."


class City(BaseModel):
    name: str
    country: str


def test_parse_with_a_pydantic_text_format(target: Target) -> None:
    client = target.client()
    raw = client.responses.with_raw_response.parse(
        model=target.model,
        input="Give the capital of France as JSON."
        + target.scripted('{"name": "Paris", "country": "France"}'),
        text_format=City,
        max_output_tokens=40,
        temperature=0,
    )
    check_response(raw.http_response.json())
    parsed = raw.parse().output_parsed
    assert isinstance(parsed, City)
    if target.picolm is not None:
        assert parsed == City(name="Paris", country="France")


def test_tool_round_trip_with_previous_response_id(target: Target) -> None:
    client = target.client()
    call_reply = '{"city": "Paris"}'  # a named call: the model writes the arguments
    first = client.responses.create(
        model=target.model,
        input="What is the weather in Paris?" + target.scripted(call_reply),
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
        temperature=0,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert set(json.loads(calls[0].arguments)) == {"city"}
    assert calls[0].call_id.startswith("call_") and calls[0].status == "completed"

    second = client.responses.create(
        model=target.model,
        previous_response_id=first.id,
        input=[
            {
                "type": "function_call_output",
                "call_id": calls[0].call_id,
                "output": "Sunny, 22 C." + target.scripted("It is sunny in Paris."),
            }
        ],
        tools=[WEATHER_TOOL],
        max_output_tokens=30,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    assert second.output_text and "<tool_response>" not in second.output_text
    listed = httpx.get(
        f"{target.server.openai_base_url}/responses/{second.id}/input_items?order=asc"
    ).json()
    check_schema(listed, "ResponseItemList")
    items = client.responses.input_items.list(second.id, order="asc")
    assert [item.id for item in items.data] == [item["id"] for item in listed["data"]]
    assert [item.type for item in items.data] == [
        "message",
        "function_call",
        "function_call_output",
    ]
    if target.picolm is not None:
        assert second.output_text == "It is sunny in Paris."
        prompt = target.picolm.runs_with("[[reply:It is sunny in Paris.]]")[-1].prompt
        assert prompt is not None
        # The whole conversation was rendered: the question, the call and its result.
        assert "What is the weather in Paris?" in prompt
        assert "get_weather" in prompt and "Sunny, 22 C." in prompt


# ---- PicoLM stand-in: what needs scripted replies or no engine at all ----------------


@pytest.mark.parametrize(
    ("choice", "reply"),
    [
        ("required", '{"name": "get_weather", "arguments": {"city": "Rome"}}'),
        ("auto", '{"name": "get_weather", "arguments": {"city": "Rome"}}'),
        ({"type": "function", "name": "get_weather"}, '{"city": "Rome"}'),
    ],
)
def test_tool_choice_modes_call(picolm_target: Target, choice: Any, reply: str) -> None:
    body, response = raw_create(
        picolm_target.client(),
        model=PICOLM_MODEL,
        input="Weather in Rome?" + picolm_target.scripted(reply),
        tools=[WEATHER_TOOL, EMAIL_TOOL],
        tool_choice=choice,
        temperature=0,
    )
    assert [(item.type, item.name, item.arguments) for item in response.output] == [
        ("function_call", "get_weather", '{"city":"Rome"}')
    ]
    assert body["tool_choice"] == choice


def test_tool_choice_none_answers_in_text(picolm_target: Target) -> None:
    reply = '{"name": "get_weather", "arguments": {"city": "Rome"}}'
    response = picolm_target.client().responses.create(
        model=PICOLM_MODEL,
        input="Weather in Rome?" + picolm_target.scripted(reply),
        tools=[WEATHER_TOOL, EMAIL_TOOL],
        tool_choice="none",
        temperature=0,
    )
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == reply


def test_streamed_call_events(picolm_target: Target) -> None:
    reply = '{"name": "get_weather", "arguments": {"city": "Rome"}}'
    response = picolm_target.post(
        {
            "model": PICOLM_MODEL,
            "input": "Weather?" + picolm_target.scripted(reply),
            "tools": [WEATHER_TOOL, EMAIL_TOOL],
            "tool_choice": "required",
            "stream": True,
        }
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


def test_json_object_format(picolm_target: Target) -> None:
    response = picolm_target.client().responses.create(
        model=PICOLM_MODEL,
        input="JSON please" + picolm_target.scripted('{"ok": true}'),
        text={"format": {"type": "json_object"}},
        temperature=0,
    )
    assert json.loads(response.output_text) == {"ok": True}


def test_engine_failure_in_a_stream(picolm_target: Target) -> None:
    response = picolm_target.post(
        {"model": PICOLM_MODEL, "input": "[[crash]]", "stream": True, "temperature": 0}
    )
    events = sse_events(response.text)
    for event in events:
        check_event(event)
    assert [event["type"] for event in events][-2:] == ["error", "response.failed"]
    assert "exited with status 3" in events[-2]["message"]
    assert events[-1]["response"]["status"] == "failed"


def test_store_false_is_not_kept(picolm_target: Target) -> None:
    client = picolm_target.client()
    response = client.responses.create(
        model=PICOLM_MODEL, input="x" + picolm_target.scripted("y"), store=False
    )
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    error = check_error(
        picolm_target.post(
            {"model": PICOLM_MODEL, "input": "more", "previous_response_id": response.id}
        ),
        404,
        "previous_response_id",
    )
    assert error["code"] == "previous_response_not_found"
    assert response.id in error["message"]


def test_instructions_are_not_carried_over(picolm_target: Target) -> None:
    client = picolm_target.client()
    first = client.responses.create(
        model=PICOLM_MODEL,
        instructions="SECRET-INSTRUCTION-1",
        input="one" + picolm_target.scripted("first answer"),
    )
    client.responses.create(
        model=PICOLM_MODEL,
        previous_response_id=first.id,
        input="two" + picolm_target.scripted("second answer"),
    )
    prompt = picolm_target.picolm.runs_with("[[reply:second answer]]")[-1].prompt  # type: ignore[union-attr]
    assert prompt is not None
    assert "first answer" in prompt and "one" in prompt
    assert "SECRET-INSTRUCTION-1" not in prompt


@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("DELETE", ""), ("GET", "/input_items")]
)
def test_unknown_ids_are_404(picolm_target: Target, method: str, suffix: str) -> None:
    url = f"{picolm_target.server.openai_base_url}/responses/resp_nonexistent{suffix}"
    error = check_error(httpx.request(method, url), 404, "response_id")
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
def test_refused_parameters_are_named(
    picolm_target: Target, extra: dict[str, Any], param: str
) -> None:
    body = {"model": PICOLM_MODEL, "input": "hi", **extra}
    status = 404 if param == "model" else 400
    check_error(picolm_target.post(body), status, param)


def test_the_store_survives_a_restart(picolm_files: PicoLMFiles, tmp_path: Path) -> None:
    store = {"store_path": str(tmp_path / "store" / "responses.sqlite3")}
    with picolm_files.serve(tmp_path / "first", responses=store) as server:
        client = server.client(max_retries=0, timeout=TIMEOUT)
        created = client.responses.with_raw_response.create(
            model=PICOLM_MODEL, input="remember [[reply:kept across restarts]]", temperature=0
        ).http_response.json()
    with picolm_files.serve(tmp_path / "second", responses=store) as server:
        client = server.client(max_retries=0, timeout=TIMEOUT)
        again = client.responses.with_raw_response.retrieve(created["id"]).http_response.json()
        assert again == created
        follow = client.responses.create(
            model=PICOLM_MODEL, previous_response_id=created["id"], input="and? [[reply:ok]]"
        )
        assert follow.output_text == "ok"
