"""Ollama's API in-process over a scripted engine, through the official ``ollama``
client and raw httpx: every body and NDJSON line is checked against the client's own
pydantic types and this server's strict ones (extra fields forbidden)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from pydantic import BaseModel

from picolm_server.api.ollama import types as wire
from picolm_server.api.ollama.facts import DIGESTS
from tests.api.ollama.conftest import client_for
from tests.support.inprocess import CONTEXT_LENGTH, InProcessServer, serve_in_process
from tests.support.picolm_setup import MODEL_ID
from tests.support.scripted_engine import GRAMMAR_ABILITIES, DirectedEngine

pytestmark = pytest.mark.anyio

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
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def http(server: InProcessServer) -> httpx.AsyncClient:
    return server.http(headers={"Authorization": f"Bearer {server.api_key}"})


def checked(body: dict[str, Any], ours: type[BaseModel], theirs: type[BaseModel]) -> None:
    ours.model_validate(body)
    theirs.model_validate(body)


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.splitlines()]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def test_version_passes_copilots_check(ollama_app: InProcessServer) -> None:
    body = (await http(ollama_app).get("/api/version")).json()
    wire.Version.model_validate(body)
    assert tuple(int(part) for part in body["version"].split(".")) >= (0, 6, 4)


@pytest.fixture(scope="module")
def tiny_digest(tiny_gguf: Path) -> tuple[str, int]:
    return hashlib.sha256(tiny_gguf.read_bytes()).hexdigest(), tiny_gguf.stat().st_size


async def test_tags_list_the_model_with_gguf_details_and_its_files_digest(
    ollama_app: InProcessServer, client: ollama.AsyncClient, tiny_digest: tuple[str, int]
) -> None:
    raw = (await http(ollama_app).get("/api/tags")).json()
    checked(raw, wire.ModelList, ollama.ListResponse)
    listed = (await client.list()).models
    assert [m.model for m in listed] == [f"{MODEL_ID}:latest"]
    model = listed[0]
    assert (model.digest, model.size) == tiny_digest
    assert model.details is not None
    assert model.details.format == "gguf" and model.details.family == "llama"
    assert model.details.quantization_level == "F32"  # the tiny model's file_type 0
    assert model.details.parameter_size and model.details.parameter_size[-1] in "KMB"
    hashed = DIGESTS.computed
    await client.list()
    assert DIGESTS.computed == hashed  # computed once per file version


@pytest.mark.parametrize("name", [MODEL_ID, f"{MODEL_ID}:latest"])
async def test_show_gives_capabilities_context_length_and_parameters(
    ollama_app: InProcessServer, client: ollama.AsyncClient, name: str
) -> None:
    raw = (await http(ollama_app).post("/api/show", json={"model": name})).json()
    checked(raw, wire.ModelShown, ollama.ShowResponse)
    shown = await client.show(name)
    assert shown.capabilities == ["completion", "tools", "embedding"]
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 512
    assert shown.modelinfo["tokenizer.ggml.tokens"] is None  # the vocabulary is left out
    assert shown.parameters is not None and f"num_ctx {CONTEXT_LENGTH}" in shown.parameters
    assert shown.template and "<|im_start|>" in shown.template


async def test_chat_replies_whole_with_real_counts_and_measured_durations(
    client: ollama.AsyncClient, ollama_app: InProcessServer
) -> None:
    raw = await http(ollama_app).post(
        "/api/chat",
        json={"model": MODEL_ID, "messages": user("Hi [[reply:Hello there]]"), "stream": False},
    )
    checked(raw.json(), wire.ChatPart, ollama.ChatResponse)
    reply = await client.chat(MODEL_ID, messages=user("Hi [[reply:Hello there]]"))
    assert reply.message.content == "Hello there"
    assert reply.done and reply.done_reason == "stop"
    assert reply.eval_count == 2
    request = ollama_app.engine.requests[-1]
    assert reply.prompt_eval_count == len(request.prompt_tokens or ())
    for duration in (reply.total_duration, reply.prompt_eval_duration, reply.eval_duration):
        assert isinstance(duration, int) and duration > 0
    assert reply.load_duration is not None and reply.load_duration >= 0
    assert reply.total_duration is not None and reply.eval_duration is not None
    assert reply.total_duration >= reply.eval_duration


async def test_chat_streams_ndjson_by_default_ending_with_done(
    client: ollama.AsyncClient, ollama_app: InProcessServer
) -> None:
    response = await http(ollama_app).post(
        "/api/chat", json={"model": MODEL_ID, "messages": user("[[reply:one two three]]")}
    )
    parts = lines(response)
    for part in parts:
        checked(part, wire.ChatPart, ollama.ChatResponse)
    assert [p["done"] for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p["message"]["content"] for p in parts) == "one two three"
    assert parts[-1]["done_reason"] == "stop" and parts[-1]["eval_count"] == 3
    streamed = [p async for p in await client.chat(MODEL_ID, user("[[reply:a b]]"), stream=True)]
    assert "".join(p.message.content or "" for p in streamed) == "a b"
    assert streamed[-1].done


async def test_tools_round_trip_with_arguments_as_objects(
    client: ollama.AsyncClient, ollama_app: InProcessServer
) -> None:
    first = await client.chat(
        MODEL_ID, user(f"Weather in Paris? [[reply:{CALL}]]"), tools=[WEATHER]
    )
    calls = first.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "Paris"}
    raw = await http(ollama_app).post(
        "/api/chat",
        json={"model": MODEL_ID, "messages": user(f"[[reply:{CALL}]]"), "tools": [WEATHER]},
    )
    for part in lines(raw):
        checked(part, wire.ChatPart, ollama.ChatResponse)
    second = await client.chat(
        MODEL_ID,
        [
            *user("Weather in Paris?"),
            first.message,
            {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"},
            *user("[[reply:It is sunny.]]"),
        ],
        tools=[WEATHER],
    )
    assert second.message.content == "It is sunny."
    prompt = ollama_app.engine.requests[-1].prompt
    assert prompt.index('"city": "Paris"') < prompt.index("sunny, 21 C")


async def test_format_schema_holds_the_reply_to_the_schema(
    client: ollama.AsyncClient, ollama_app: InProcessServer
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    reply = await client.chat(MODEL_ID, user('[[reply:{"n": 3}]]'), format=schema)
    assert json.loads(reply.message.content or "") == {"n": 3}
    assert ollama_app.engine.requests[-1].constraint is not None


async def test_generate_whole_streamed_raw_and_with_system(
    client: ollama.AsyncClient, ollama_app: InProcessServer
) -> None:
    whole = await client.generate(MODEL_ID, "Say [[reply:yes sir]]", system="Be brief.")
    assert whole.response == "yes sir" and whole.done_reason == "stop"
    assert "Be brief." in ollama_app.engine.requests[-1].prompt
    raw = await client.generate(MODEL_ID, "plain text [[reply:ok]]", raw=True)
    assert ollama_app.engine.requests[-1].prompt == "plain text [[reply:ok]]"
    assert raw.response == " ok"  # a raw continuation keeps its leading space
    response = await http(ollama_app).post(
        "/api/generate", json={"model": MODEL_ID, "prompt": "[[reply:x y]]"}
    )
    parts = lines(response)
    for part in parts:
        checked(part, wire.GeneratePart, ollama.GenerateResponse)
    assert "".join(p["response"] for p in parts) == "x y" and parts[-1]["done"]


async def test_generate_with_options_reaches_the_engine(
    client: ollama.AsyncClient, ollama_app: InProcessServer
) -> None:
    options = {
        "temperature": 0.2,
        "top_p": 0.5,
        "top_k": 7,
        "seed": 9,
        "num_predict": 3,
        "stop": ["zz"],
        "repeat_penalty": 1.1,
        "num_ctx": CONTEXT_LENGTH,
    }
    await client.generate(MODEL_ID, "words", options=options)
    request = ollama_app.engine.requests[-1]
    assert (request.temperature, request.top_p, request.top_k, request.seed) == (0.2, 0.5, 7, 9)
    assert request.max_tokens == 3


async def test_an_empty_prompt_loads_and_keep_alive_zero_unloads(
    ollama_app: InProcessServer,
) -> None:
    raw = http(ollama_app)
    shelf = ollama_app.core.models
    body = (await raw.post("/api/generate", json={"model": MODEL_ID})).json()
    checked(body, wire.GeneratePart, ollama.GenerateResponse)
    assert body["done_reason"] == "load"
    body = (await raw.post("/api/generate", json={"model": MODEL_ID, "keep_alive": 0})).json()
    assert body["done_reason"] == "unload"
    assert ollama_app.engine.unloaded == 1
    assert shelf.loaded_engine(MODEL_ID) is None
    assert (await raw.get("/api/ps")).json() == {"models": []}
    body = (await raw.post("/api/chat", json={"model": MODEL_ID, "messages": []})).json()
    checked(body, wire.ChatPart, ollama.ChatResponse)
    assert body["done_reason"] == "load" and shelf.loaded_engine(MODEL_ID) is not None


async def test_keep_alive_of_a_request_is_the_models_expiry_in_ps(
    client: ollama.AsyncClient, ollama_app: InProcessServer
) -> None:
    before = time.time()
    await client.chat(MODEL_ID, user("[[reply:ok]]"), keep_alive="10m")
    raw = (await http(ollama_app).get("/api/ps")).json()
    checked(raw, wire.RunningModels, ollama.ProcessResponse)
    (model,) = (await client.ps()).models
    assert model.size_vram == 0 and model.context_length == CONTEXT_LENGTH
    assert model.expires_at is not None
    left = model.expires_at.timestamp() - before
    assert 590 < left <= 601
    await client.chat(MODEL_ID, user("[[reply:ok]]"), keep_alive=-1)
    (model,) = (await client.ps()).models
    assert model.expires_at is not None and model.expires_at.year == 9999


async def test_embed_and_the_older_embeddings(
    client: ollama.AsyncClient, ollama_app: InProcessServer
) -> None:
    raw = await http(ollama_app).post("/api/embed", json={"model": MODEL_ID, "input": ["a", "b"]})
    checked(raw.json(), wire.Embedded, ollama.EmbedResponse)
    both = await client.embed(MODEL_ID, ["a b", "c"])
    one = await client.embed(MODEL_ID, "a b", truncate=False)
    assert len(both.embeddings) == 2 and one.embeddings[0] == both.embeddings[0]
    assert ollama_app.engine.truncated[-2:] == [True, False]  # Ollama's default: true
    assert both.prompt_eval_count and both.prompt_eval_count > 0
    legacy = await client.embeddings(MODEL_ID, "a b")
    assert list(legacy.embedding) == list(one.embeddings[0])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "nope", "messages": []}, 404, "model 'nope' not found"),
        ({"model": "nope:latest", "messages": []}, 404, "model 'nope:latest' not found"),
        ({"messages": user("hi")}, 400, "model is required"),
        ({"model": MODEL_ID, "messages": user("hi"), "think": True}, 400, "thinking"),
        (
            {"model": MODEL_ID, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
            400,
            "images are not supported",
        ),
        (
            {"model": MODEL_ID, "messages": user("x"), "options": {"num_ctx": 513}},
            400,
            "num_ctx 513 is more than this model's context of 512 tokens",
        ),
        ({"model": MODEL_ID, "messages": user("x"), "keep_alive": "soon"}, 400, "keep_alive"),
        ({"model": MODEL_ID, "messages": user("x"), "keep_alive": "9999h"}, 400, "keep_alive"),
    ],
)
async def test_refusals_use_ollamas_envelope(
    ollama_app: InProcessServer, body: dict[str, Any], status: int, message: str
) -> None:
    response = await http(ollama_app).post("/api/chat", json=body)
    assert response.status_code == status
    error = response.json()
    assert list(error) == ["error"] and message in error["error"]


async def test_think_false_is_accepted(client: ollama.AsyncClient) -> None:
    reply = await client.chat(MODEL_ID, user("[[reply:ok]]"), think=False)
    assert reply.message.content == "ok"


async def test_an_unknown_model_is_a_404_response_error(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        await client.chat("missing-model", user("hi"))
    assert raised.value.status_code == 404
    assert raised.value.error == "model 'missing-model' not found"


async def test_an_error_after_the_stream_started_is_an_error_line(
    client: ollama.AsyncClient, ollama_app: InProcessServer
) -> None:
    response = await http(ollama_app).post(
        "/api/generate", json={"model": MODEL_ID, "prompt": "go [[crash]]"}
    )
    assert response.status_code == 200
    parts = lines(response)
    assert set(parts[-1]) == {"error"} and not any(p.get("done") for p in parts)
    with pytest.raises(ollama.ResponseError):
        async for _ in await client.generate(MODEL_ID, "go [[crash]]", stream=True):
            pass


async def test_the_api_key_applies_to_api_paths(ollama_app: InProcessServer) -> None:
    response = await ollama_app.http().get("/api/tags")
    assert response.status_code == 401 and list(response.json()) == ["error"]
    with pytest.raises(ollama.ResponseError) as raised:
        await client_for(ollama_app, key="wrong-key").list()
    assert raised.value.status_code == 401


async def test_generate_with_suffix_is_refused_where_the_engine_has_no_fim(
    ollama_app: InProcessServer,
) -> None:
    response = await http(ollama_app).post(
        "/api/generate", json={"model": MODEL_ID, "prompt": "def f(", "suffix": "return x"}
    )
    assert response.status_code == 400
    assert "fill-in-the-middle" in response.json()["error"]


async def test_metrics_count_the_routes(
    client: ollama.AsyncClient, ollama_app: InProcessServer
) -> None:
    await client.chat(MODEL_ID, user("[[reply:ok]]"))
    await client.list()
    metrics = (await http(ollama_app).get("/metrics")).text
    assert 'route="/api/chat",status="200"' in metrics
    assert 'route="/api/tags",status="200"' in metrics


async def test_cors_answers_a_preflight_and_marks_the_answer() -> None:
    origin = "https://chat.example"
    async with serve_in_process(server={"cors_origins": [origin]}) as server:
        raw = server.http(headers={"Origin": origin})
        preflight = await raw.options(
            "/api/chat",
            headers={
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        tags = await raw.get("/api/tags", headers={"Authorization": f"Bearer {server.api_key}"})
        assert tags.headers["access-control-allow-origin"] == origin


async def test_ndjson_streams_are_never_compressed(ollama_app: InProcessServer) -> None:
    # Compressed, the lines would wait in the compressor instead of reaching the client.
    response = await http(ollama_app).post(
        "/api/generate",
        json={"model": MODEL_ID, "prompt": "[[reply:" + "word " * 400 + "]]"},
        headers={"Accept-Encoding": "gzip"},
    )
    assert "content-encoding" not in response.headers
    assert len(response.content) > 1024 and lines(response)[-1]["done"]


async def test_insert_is_a_capability_where_the_engine_has_fill_in_the_middle(
    tiny_gguf: Path,
) -> None:
    engine = DirectedEngine(abilities=replace(GRAMMAR_ABILITIES, fim_tokens=(1, 2, 3)))
    engine.model = replace(engine.model, id=MODEL_ID, context_length=CONTEXT_LENGTH)
    async with serve_in_process(engine, model_file=tiny_gguf) as server:
        shown = await client_for(server).show(MODEL_ID)
    assert shown.capabilities == ["completion", "tools", "insert"]
