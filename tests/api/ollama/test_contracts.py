"""The calls two Ollama clients make, in their order and shapes, in-process over a
scripted engine whose shelf entry is a GGUF trained for an 8192-token context:

- VS Code Copilot's Ollama provider: ``/api/version`` at least 0.6.4, ``/api/tags``,
  ``/api/show`` per model (``capabilities`` with ``tools``, ``model_info`` with
  ``<general.architecture>.context_length``), then chat on ``/v1/chat/completions``
  under the name ``/api/tags`` gave (``name:latest``).
- Home Assistant's Ollama integration: the official client lists models, then chats
  streaming with tools, ``keep_alive`` as ``f"{seconds}s"`` (-1 by default) and
  ``options={"num_ctx": 8192}`` (its default), sends the tool results back, and reads
  the streamed message and calls.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import ollama
import pytest

from tests.api.ollama.conftest import client_for
from tests.support.inprocess import CONTEXT_LENGTH, InProcessServer, serve_in_process
from tests.support.picolm_setup import MODEL_ID
from tests.support.scripted_engine import DirectedEngine
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

pytestmark = pytest.mark.anyio

HA_NUM_CTX = 8192
HA_TOOL = {
    "type": "function",
    "function": {
        "name": "HassTurnOn",
        "description": "Turns on/opens a device or entity",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "area": {"type": "string"}},
            "required": [],
        },
    },
}
CALL = '<tool_call>{"name": "HassTurnOn", "arguments": {"name": "kitchen light"}}</tool_call>'


@pytest.fixture(scope="module")
def long_context_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("contracts") / "long.gguf"
    return build_tiny_llama_gguf(path, context_length=HA_NUM_CTX)


@pytest.fixture
async def app(long_context_gguf: Path) -> AsyncIterator[InProcessServer]:
    engine = DirectedEngine()
    engine.model = replace(engine.model, id=MODEL_ID, context_length=CONTEXT_LENGTH)
    async with serve_in_process(engine, model_file=long_context_gguf) as server:
        yield server


async def test_copilot_checks_version_show_and_chats_on_the_openai_api(
    app: InProcessServer,
) -> None:
    http = app.http(headers={"Authorization": f"Bearer {app.api_key}"})
    version = (await http.get("/api/version")).json()["version"]
    assert tuple(int(part) for part in version.split(".")) >= (0, 6, 4)
    names = [model["name"] for model in (await http.get("/api/tags")).json()["models"]]
    assert names == [f"{MODEL_ID}:latest"]
    shown = (await http.post("/api/show", json={"model": names[0]})).json()
    assert "tools" in shown["capabilities"]
    architecture = shown["model_info"]["general.architecture"]
    assert shown["model_info"][f"{architecture}.context_length"] == HA_NUM_CTX
    reply = await app.client().chat.completions.create(
        model=names[0], messages=[{"role": "user", "content": "[[reply:Hi from Copilot]]"}]
    )
    assert reply.choices[0].message.content == "Hi from Copilot"


async def _ha_turn(
    client: ollama.AsyncClient, model: str, messages: list[Any]
) -> tuple[str, list[Any]]:
    """One turn as the integration runs it: a stream, its content and calls gathered."""
    content: list[str] = []
    calls: list[Any] = []
    async for part in await client.chat(
        model=model,
        messages=messages,
        tools=[HA_TOOL],
        stream=True,
        keep_alive=f"{-1}s",
        options={"num_ctx": HA_NUM_CTX},
    ):
        content.append(part.message.content or "")
        calls.extend(part.message.tool_calls or [])
    return "".join(content), calls


async def test_home_assistant_lists_and_chats_with_tools_and_keep_alive(
    app: InProcessServer,
) -> None:
    client = client_for(app)
    model = (await client.list()).models[0].model
    assert model == f"{MODEL_ID}:latest"
    system = {"role": "system", "content": "You control this smart home."}
    asked = {"role": "user", "content": f"Turn on the kitchen light [[reply:{CALL}]]"}
    content, calls = await _ha_turn(client, model, [system, asked])
    assert content == ""
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("HassTurnOn", {"name": "kitchen light"})
    ]
    result = {"role": "tool", "content": json.dumps({"success": True})}
    again = {"role": "user", "content": "[[reply:The kitchen light is on.]]"}
    assistant = {"role": "assistant", "content": content, "tool_calls": calls}
    content, calls = await _ha_turn(client, model, [system, asked, assistant, result, again])
    assert content == "The kitchen light is on." and calls == []
    (running,) = (await client.ps()).models
    assert running.expires_at is not None and running.expires_at.year == 9999  # kept
