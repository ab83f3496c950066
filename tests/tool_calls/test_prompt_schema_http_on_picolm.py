"""A schema in the prompt through a running server on the PicoLM stand-in, where the
engine is the point: its JSON writer writes the prompt's schema whatever keys the model
gets wrong, and keeps a right reply as it is. The wire format is tested in-process in
test_prompt_schema_http.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL
from tests.support.picolm_setup import PicoLMFiles, PicoLMServer
from tests.support.server import RunningServer
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf
from tests.tool_calls.test_prompt_schema import CITY, pydantic_ai_instructions
from tests.tool_calls.test_prompt_schema_http import FORMS, HEADER, TEXT, scripted


def chat(
    server: RunningServer, model: str, messages: list[dict[str, Any]], **body: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
    response = httpx.post(
        f"{server.openai_base_url}/chat/completions",
        json={"model": model, "messages": messages, **body},
        headers=headers,
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response


def logged(server: RunningServer, response: httpx.Response) -> str:
    """The request log's line for ``response``."""
    request_id = response.headers["x-request-id"]
    lines = [line for line in server.log().splitlines() if f"id={request_id}" in line]
    assert len(lines) == 1
    return lines[0]


def pico_server(files: PicoLMFiles, root: Path, setting: str) -> Any:
    model = build_tiny_llama_gguf(root / "tiny-4k.gguf", context_length=4096)
    return files.serve(
        root,
        picolm={"model_path": str(model), "context_length": 4096, "max_tokens": 64},
        structured_output={"prompt_schema": setting},
    )


@pytest.fixture(scope="module")
def pico(picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The PicoLM stand-in with ``prompt_schema: any``."""
    with pico_server(picolm_files, tmp_path_factory.mktemp("pico-any"), "any") as server:
        yield server


@pytest.mark.parametrize("form", list(FORMS))
def test_picolm_writes_the_prompts_schema(pico: PicoLMServer, form: str) -> None:
    # The model gets the keys wrong; the JSON writer writes the schema's own.
    response = chat(
        pico.server,
        PICOLM_MODEL,
        scripted(form, '{"town": "Paris", "people": 2100000}'),
        response_format={"type": "json_object"},
        temperature=0,
    )
    choice = response.json()["choices"][0]
    jsonschema.validate(json.loads(choice["message"]["content"]), CITY)
    assert choice["finish_reason"] == "stop"
    assert response.headers[HEADER] == "prompt"
    assert logged(pico.server, response).endswith("schema=prompt")


def test_picolm_keeps_a_right_reply_as_it_is(pico: PicoLMServer) -> None:
    good = '{"name": "Paris", "population": 2100000}'
    body = {"response_format": {"type": "json_object"}, "temperature": 0}
    response = chat(pico.server, PICOLM_MODEL, scripted("instructor", good), **body)
    assert response.json()["choices"][0]["message"]["content"] == good


def test_picolm_responses_api_takes_the_schema_from_the_instructions(pico: PicoLMServer) -> None:
    # The same rule on every API that can ask for json_object (here text.format).
    response = httpx.post(
        f"{pico.server.openai_base_url}/responses",
        json={
            "model": PICOLM_MODEL,
            "instructions": pydantic_ai_instructions(CITY),
            "input": TEXT + ' [[reply:{"town": "Paris"}]]',
            "text": {"format": {"type": "json_object"}},
            "temperature": 0,
            "store": False,
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers[HEADER] == "prompt"
    text = response.json()["output"][0]["content"][0]["text"]
    jsonschema.validate(json.loads(text), CITY)
