"""A schema in the prompt through a running server, on both engines: the reply is held to
it, the response header and the request log say so, and where it does not apply (no JSON
asked for, ``off``, several schemas) nothing changes. Also: json_object replies on the
real SmolLM2 end complete and valid."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import requires_llama
from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL
from tests.support.picolm_setup import PicoLMFiles, PicoLMServer
from tests.support.server import RunningServer, run_server
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf
from tests.tool_calls.test_prompt_schema import (
    CITY,
    MD_JSON_REQUEST,
    ai_sdk_system,
    instructor_system,
    litellm_user,
    pydantic_ai_instructions,
)

LLAMA_MODEL = "SmolLM2-135M-Instruct"
HEADER = "x-picolm-schema-source"
TEXT = "Paris is the capital of France. About 2,100,000 people live there."
FORMS = {
    "instructor": [
        {"role": "system", "content": instructor_system(CITY)},
        {"role": "user", "content": TEXT},
    ],
    "pydantic-ai": [
        {"role": "system", "content": pydantic_ai_instructions(CITY)},
        {"role": "user", "content": TEXT},
    ],
    "ai-sdk": [
        {"role": "system", "content": ai_sdk_system(CITY)},
        {"role": "user", "content": TEXT},
    ],
    "litellm": [
        {"role": "user", "content": TEXT},
        {"role": "user", "content": litellm_user(CITY)},
    ],
}


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


def streamed(
    server: RunningServer, model: str, messages: list[dict[str, Any]], **body: Any
) -> tuple[httpx.Headers, list[str]]:
    pieces: list[str] = []
    with httpx.stream(
        "POST",
        f"{server.openai_base_url}/chat/completions",
        json={"model": model, "messages": messages, "stream": True, **body},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    pieces.append(choice["delta"].get("content") or "")
        return response.headers, pieces


def logged(server: RunningServer, response: httpx.Response) -> str:
    """The request log's line for ``response``."""
    request_id = response.headers["x-request-id"]
    lines = [line for line in server.log().splitlines() if f"id={request_id}" in line]
    assert len(lines) == 1
    return lines[0]


# ---- the embedded SmolLM2 on llama.cpp ------------------------------------------------------


@pytest.fixture(scope="module")
def llama_off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    pytest.importorskip("llama_cpp")
    config = {"structured_output": {"prompt_schema": "off"}}
    with run_server(config, tmp_path_factory.mktemp("llama-off")) as server:
        yield server


@requires_llama
@pytest.mark.llama
@pytest.mark.parametrize("form", list(FORMS))
def test_each_clients_schema_holds_the_reply(llama_server: RunningServer, form: str) -> None:
    response = chat(
        llama_server,
        LLAMA_MODEL,
        FORMS[form],
        response_format={"type": "json_object"},
        temperature=0,
    )
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), CITY)
    assert response.headers[HEADER] == "prompt"
    assert logged(llama_server, response).endswith("schema=prompt")


@requires_llama
@pytest.mark.llama
def test_a_streamed_reply_says_so_in_its_headers_too(llama_server: RunningServer) -> None:
    body = {"response_format": {"type": "json_object"}, "temperature": 0}
    headers, pieces = streamed(llama_server, LLAMA_MODEL, FORMS["instructor"], **body)
    assert headers[HEADER] == "prompt"
    whole = chat(llama_server, LLAMA_MODEL, FORMS["instructor"], **body).json()
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]


@requires_llama
@pytest.mark.llama
def test_a_prompt_quoting_a_schema_without_asking_for_json_is_untouched(
    llama_server: RunningServer, llama_off: RunningServer
) -> None:
    messages = [
        {"role": "user", "content": f"What does this JSON schema describe? {json.dumps(CITY)}"}
    ]
    body = {"temperature": 0, "max_tokens": 40, "seed": 3}
    default = chat(llama_server, LLAMA_MODEL, messages, **body)
    assert HEADER not in default.headers
    assert "schema=" not in logged(llama_server, default)
    # The very reply the server gives with the feature turned off.
    off = chat(llama_off, LLAMA_MODEL, messages, **body)
    assert default.json()["choices"][0]["message"] == off.json()["choices"][0]["message"]
    # instructor's MD_JSON asks for a fenced block in words: only "any" takes that.
    md_json = [*FORMS["instructor"], {"role": "user", "content": MD_JSON_REQUEST}]
    assert HEADER not in chat(llama_server, LLAMA_MODEL, md_json, **body).headers


@requires_llama
@pytest.mark.llama
def test_off_turns_it_off(llama_off: RunningServer) -> None:
    response = chat(
        llama_off,
        LLAMA_MODEL,
        FORMS["instructor"],
        response_format={"type": "json_object"},
        temperature=0,
    )
    assert HEADER not in response.headers
    assert "schema=" not in logged(llama_off, response)


# Requests (prompt and seed, the server's default sampling) that SmolLM2 ran away on until
# max_tokens before json_object replies were made to end (bench/json_replies.py, seeds
# 4, 15 and 17 there).
RUNAWAY_REQUESTS = [
    ("List three fruits and their colours as a JSON object.", 4),
    ("Give me a recipe for pancakes as JSON with ingredients and steps.", 15),
    ("Classify the sentiment of 'This movie was terrible' as JSON.", 17),
]


@requires_llama
@pytest.mark.llama
@pytest.mark.parametrize(("prompt", "seed"), RUNAWAY_REQUESTS)
def test_json_object_replies_end_complete_and_valid(
    llama_server: RunningServer, prompt: str, seed: int
) -> None:
    # The server's default temperature, top_p and max_tokens, as a client of JSON mode
    # sends it.
    response = chat(
        llama_server,
        LLAMA_MODEL,
        [{"role": "user", "content": prompt}],
        response_format={"type": "json_object"},
        seed=seed,
    )
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"]), dict)


# ---- PicoLM through its stand-in ---------------------------------------------------------


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


@pytest.fixture(scope="module")
def pico_off(picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with pico_server(picolm_files, tmp_path_factory.mktemp("pico-off"), "off") as server:
        yield server


def scripted(form: str, reply: str, *extra: dict[str, str]) -> list[dict[str, Any]]:
    """A client's messages, with the stand-in's reply directive in the user's text."""
    messages = [dict(message) for message in FORMS[form]]
    user = next(message for message in messages if message["role"] == "user")
    user["content"] += f" [[reply:{reply}]]"
    return [*messages, *extra]


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


def test_picolm_writes_a_fenced_block_when_one_is_asked_for(pico: PicoLMServer) -> None:
    good = '{"name": "Paris", "population": 2100000}'
    ask = {"role": "user", "content": MD_JSON_REQUEST}
    response = chat(pico.server, PICOLM_MODEL, scripted("instructor", good, ask), temperature=0)
    assert response.json()["choices"][0]["message"]["content"] == f"```json\n{good}\n```"
    assert response.headers[HEADER] == "prompt"


def test_picolm_several_schemas_change_nothing(pico: PicoLMServer) -> None:
    other = {"type": "object", "properties": {"town": {"type": "string"}}}
    reply = '{"x": 1}'
    messages = scripted("instructor", reply, {"role": "user", "content": json.dumps(other)})
    response = chat(
        pico.server, PICOLM_MODEL, messages, response_format={"type": "json_object"}, temperature=0
    )
    assert response.json()["choices"][0]["message"]["content"] == reply
    assert HEADER not in response.headers


def test_picolm_off_turns_it_off(pico_off: PicoLMServer) -> None:
    reply = '{"town": "Paris"}'
    body = {"response_format": {"type": "json_object"}, "temperature": 0}
    response = chat(pico_off.server, PICOLM_MODEL, scripted("instructor", reply), **body)
    assert response.json()["choices"][0]["message"]["content"] == reply
    assert HEADER not in response.headers
    assert "schema=" not in logged(pico_off.server, response)


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
