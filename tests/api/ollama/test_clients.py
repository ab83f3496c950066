"""The official ``ollama`` Python client against real servers: SmolLM2 on llama.cpp and
the PicoLM stand-in (tests/conftest.py's session servers). Chat, streams, generate,
a tools round trip, a ``format`` schema, embeddings, the listings and an unknown model,
on each engine as far as it can."""

from __future__ import annotations

import json
from typing import Any

import ollama
import pytest

from tests.support.both_engines import ENGINES, Target, target_for

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest) -> Target:
    return target_for(request)


@pytest.fixture
def client(target: Target) -> ollama.Client:
    return ollama.Client(host=target.server.base_url, headers=target.headers)


def ask(target: Target, text: str, reply: str) -> list[dict[str, Any]]:
    """A user turn: on PicoLM's stand-in the reply is directed, SmolLM2 writes its own."""
    directed = f" [[reply:{reply}]]" if target.picolm is not None else ""
    return [{"role": "user", "content": text + directed}]


def test_list_show_and_ps(target: Target, client: ollama.Client) -> None:
    listed = client.list().models
    names = [model.model for model in listed]
    assert f"{target.model}:latest" in names
    model = listed[names.index(f"{target.model}:latest")]
    assert model.digest and len(model.digest) == 64
    assert model.details is not None and model.details.family == "llama"
    assert model.details.quantization_level and model.details.parameter_size
    shown = client.show(target.model)
    assert shown.capabilities is not None
    assert {"completion", "tools"} <= set(shown.capabilities)
    assert ("embedding" in shown.capabilities) == (target.name == "llama")
    assert shown.modelinfo is not None and shown.modelinfo["llama.context_length"] > 0
    client.chat(target.model, ask(target, "Hi", "Hello"), options={"num_predict": 4})
    running = [m.model for m in client.ps().models]
    assert f"{target.model}:latest" in running


def test_chat_whole_and_streamed(target: Target, client: ollama.Client) -> None:
    options = {"num_predict": 12, "temperature": 0, "seed": 1}
    whole = client.chat(target.model, ask(target, "Say hello.", "Hello there"), options=options)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.prompt_eval_count and whole.eval_count and whole.eval_count <= 12
    assert whole.total_duration and whole.eval_duration and whole.prompt_eval_duration
    parts = list(
        client.chat(
            target.model, ask(target, "Say hello.", "Hello there"), stream=True, options=options
        )
    )
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count


def test_generate(target: Target, client: ollama.Client) -> None:
    prompt = "The capital of France is" + (" [[reply:Paris]]" if target.picolm else "")
    reply = client.generate(target.model, prompt, options={"num_predict": 8})
    assert reply.response and reply.done
    parts = list(client.generate(target.model, prompt, stream=True, options={"num_predict": 8}))
    assert parts[-1].done and parts[-1].eval_count


def test_tools_round_trip(target: Target, client: ollama.Client) -> None:
    if target.picolm is not None:
        first = client.chat(target.model, ask(target, "Weather in Paris?", CALL), tools=[WEATHER])
        calls = first.message.tool_calls
        assert calls and calls[0].function.name == "get_weather"
        assert calls[0].function.arguments == {"city": "Paris"}
        call: Any = first.message
    else:  # SmolLM2-135M rarely chooses a call by itself: the call is the client's
        call = {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        }
    second = client.chat(
        target.model,
        [
            {"role": "user", "content": "Weather in Paris?"},
            call,
            {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"},
            *ask(target, "So?", "It is sunny in Paris."),
        ],
        tools=[WEATHER],
        options={"num_predict": 24, "temperature": 0},
    )
    assert second.message.content and second.done
    if target.picolm is not None:
        assert second.message.content == "It is sunny in Paris."
        assert target.picolm.runs_with("sunny, 21 C")  # the result reached the model


def test_format_schema_is_held_exactly(target: Target, client: ollama.Client) -> None:
    reply = client.chat(
        target.model,
        ask(target, "Invent a person.", '{"name": "Ada", "age": 36}'),
        format=SCHEMA,
        options={"num_predict": 64, "temperature": 0},
    )
    data = json.loads(reply.message.content or "")
    assert set(data) == {"name", "age"} and isinstance(data["age"], int)


def test_embed(target: Target, client: ollama.Client) -> None:
    if target.picolm is not None:
        with pytest.raises(ollama.ResponseError) as raised:
            client.embed(target.model, "hello")
        assert raised.value.status_code == 400
        return
    both = client.embed(target.model, ["hello world", "goodbye"])
    assert len(both.embeddings) == 2 and len(both.embeddings[0]) > 100
    legacy = client.embeddings(target.model, "hello world")
    assert len(legacy.embedding) == len(both.embeddings[0])
    long = "hello " * 10_000  # more tokens than the embedding context holds
    cut = client.embed(target.model, long)  # truncate: Ollama's default, true
    assert len(cut.embeddings[0]) == len(both.embeddings[0])
    assert cut.prompt_eval_count and cut.prompt_eval_count < 10_000
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(target.model, long, truncate=False)
    assert refused.value.status_code == 400


def test_an_unknown_model_is_a_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat("no-such-model", [{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 404
    assert raised.value.error == "model 'no-such-model' not found"
