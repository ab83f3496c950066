"""The Messages API through the official ``anthropic`` SDK on a real server with the
real SmolLM2 on llama.cpp, where what the model makes of a request is the point: a
grounded answer, a stop sequence it reaches, tool calls it writes under a grammar, a
round trip whose prompt it counts. Every body and stream event is checked against the
SDK's own types, strictly."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.api.anthropic.test_routes import TOOLS, WEATHER, assert_sequence, sdk_params, user
from tests.api.anthropic.test_routes_on_picolm import create, raw_stream, sdk_client
from tests.conftest import requires_llama
from tests.support.server import RunningServer

LLAMA_MODEL = "SmolLM2-135M-Instruct"


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
