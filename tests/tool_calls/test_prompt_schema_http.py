"""A schema in the prompt on the wire, on the application in-process over a scripted
engine of each kind (a grammar, or JSON written without one): the reply is held to it,
the response header and the request log say so, and where it does not apply (no JSON
asked for, ``off``, several schemas) nothing changes. What the real SmolLM2 writes is in
test_prompt_schema_http_on_llama.py; what the PicoLM engine's JSON writer makes of a
wrong reply, in test_prompt_schema_http_on_picolm.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import pytest

from tests.support.inprocess import InProcessServer, serve_in_process
from tests.support.picolm_setup import MODEL_ID
from tests.support.scripted_engine import GRAMMAR_ABILITIES, SCHEMA_ABILITIES, engine_of_kind
from tests.tool_calls.test_prompt_schema import (
    CITY,
    MD_JSON_REQUEST,
    ai_sdk_system,
    instructor_system,
    litellm_user,
    pydantic_ai_instructions,
)

HEADER = "x-picolm-schema-source"
TEXT = "Paris is the capital of France. About 2,100,000 people live there."
GOOD = '{"name": "Paris", "population": 2100000}'
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
JSON_OBJECT = {"response_format": {"type": "json_object"}, "temperature": 0}


def scripted(form: str, reply: str, *extra: dict[str, str]) -> list[dict[str, Any]]:
    """A client's messages, with the engine's reply directive in the user's text."""
    messages = [dict(message) for message in FORMS[form]]
    user = next(message for message in messages if message["role"] == "user")
    user["content"] += f" [[reply:{reply}]]"
    return [*messages, *extra]


async def chat(
    server: InProcessServer, messages: list[dict[str, Any]], **body: Any
) -> httpx.Response:
    response = await server.http().post(
        "/v1/chat/completions",
        json={"model": MODEL_ID, "messages": messages, **body},
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    assert response.status_code == 200, response.text
    return response


def logged(caplog: pytest.LogCaptureFixture, response: httpx.Response) -> str:
    """The request log's line for ``response``."""
    request_id = response.headers["x-request-id"]
    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "picolm_server.access" and f"id={request_id}" in record.getMessage()
    ]
    assert len(lines) == 1
    return lines[0]


@pytest.fixture(params=["grammar", "schema"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[InProcessServer]:
    abilities = GRAMMAR_ABILITIES if request.param == "grammar" else SCHEMA_ABILITIES
    async with serve_in_process(
        engine_of_kind(abilities, MODEL_ID), picolm={"max_tokens": 64}
    ) as app:
        yield app


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level("INFO", logger="picolm_server.access")
    return caplog


pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("form", list(FORMS))
async def test_each_clients_schema_holds_the_reply(
    server: InProcessServer, caplog_info: pytest.LogCaptureFixture, form: str
) -> None:
    response = await chat(server, scripted(form, GOOD), **JSON_OBJECT)
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == GOOD
    jsonschema.validate(json.loads(choice["message"]["content"]), CITY)
    assert response.headers[HEADER] == "prompt"
    assert logged(caplog_info, response).endswith("schema=prompt")
    # The engine is held to the prompt's schema, not to any JSON object.
    constraint = server.engine.requests[-1].constraint
    assert constraint is not None and constraint.json_schema == CITY


async def test_a_streamed_reply_says_so_in_its_headers_too(server: InProcessServer) -> None:
    messages = scripted("instructor", GOOD)
    pieces: list[str] = []
    async with server.http().stream(
        "POST",
        "/v1/chat/completions",
        json={"model": MODEL_ID, "messages": messages, "stream": True, **JSON_OBJECT},
        headers={"Authorization": f"Bearer {server.api_key}"},
    ) as response:
        assert response.status_code == 200
        assert response.headers[HEADER] == "prompt"
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    pieces.append(choice["delta"].get("content") or "")
    whole = (await chat(server, messages, **JSON_OBJECT)).json()
    assert "".join(pieces) == whole["choices"][0]["message"]["content"] == GOOD
    assert len([piece for piece in pieces if piece]) > 1


async def test_a_prompt_quoting_a_schema_without_asking_for_json_is_untouched(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    messages = [
        {"role": "user", "content": f"What does this JSON schema describe? {json.dumps(CITY)}"}
    ]
    body = {"temperature": 0, "max_tokens": 40, "seed": 3}
    async with (
        serve_in_process(engine_of_kind(GRAMMAR_ABILITIES, MODEL_ID)) as default_server,
        serve_in_process(
            engine_of_kind(GRAMMAR_ABILITIES, MODEL_ID), structured_output={"prompt_schema": "off"}
        ) as off_server,
    ):
        default = await chat(default_server, messages, **body)
        assert HEADER not in default.headers
        assert "schema=" not in logged(caplog_info, default)
        # The very reply, and the very engine request, the server gives with it off.
        off = await chat(off_server, messages, **body)
        assert default.json()["choices"][0]["message"] == off.json()["choices"][0]["message"]
        assert default.json()["choices"][0]["message"]["content"]
        assert default_server.engine.requests[-1] == off_server.engine.requests[-1]
        assert default_server.engine.requests[-1].constraint is None
        # instructor's MD_JSON asks for a fenced block in words: only "any" takes that.
        md_json = [*FORMS["instructor"], {"role": "user", "content": MD_JSON_REQUEST}]
        assert HEADER not in (await chat(default_server, md_json, **body)).headers
        assert default_server.engine.requests[-1].constraint is None


async def test_off_turns_it_off(caplog_info: pytest.LogCaptureFixture) -> None:
    reply = '{"town": "Paris"}'
    for abilities in (GRAMMAR_ABILITIES, SCHEMA_ABILITIES):
        async with serve_in_process(
            engine_of_kind(abilities, MODEL_ID), structured_output={"prompt_schema": "off"}
        ) as server:
            response = await chat(server, scripted("instructor", reply), **JSON_OBJECT)
            constraint = server.engine.requests[-1].constraint
        assert response.json()["choices"][0]["message"]["content"] == reply
        assert HEADER not in response.headers
        assert "schema=" not in logged(caplog_info, response)
        # Held to a JSON object only, as json_object asks.
        assert constraint is not None and constraint.json_schema == {"type": "object"}


async def test_writes_a_fenced_block_when_one_is_asked_for() -> None:
    ask = {"role": "user", "content": MD_JSON_REQUEST}
    for abilities in (GRAMMAR_ABILITIES, SCHEMA_ABILITIES):
        async with serve_in_process(
            engine_of_kind(abilities, MODEL_ID), structured_output={"prompt_schema": "any"}
        ) as server:
            response = await chat(server, scripted("instructor", GOOD, ask), temperature=0)
        assert response.json()["choices"][0]["message"]["content"] == f"```json\n{GOOD}\n```"
        assert response.headers[HEADER] == "prompt"


async def test_several_schemas_change_nothing(server: InProcessServer) -> None:
    other = {"type": "object", "properties": {"town": {"type": "string"}}}
    reply = '{"x": 1}'
    messages = scripted("instructor", reply, {"role": "user", "content": json.dumps(other)})
    response = await chat(server, messages, **JSON_OBJECT)
    assert response.json()["choices"][0]["message"]["content"] == reply
    assert HEADER not in response.headers


async def test_the_responses_api_takes_the_schema_from_the_instructions(
    server: InProcessServer,
) -> None:
    # The same rule on every API that can ask for json_object (here text.format).
    response = await server.http().post(
        "/v1/responses",
        json={
            "model": MODEL_ID,
            "instructions": pydantic_ai_instructions(CITY),
            "input": TEXT + f" [[reply:{GOOD}]]",
            "text": {"format": {"type": "json_object"}},
            "temperature": 0,
            "store": False,
        },
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    assert response.status_code == 200, response.text
    assert response.headers[HEADER] == "prompt"
    text = response.json()["output"][0]["content"][0]["text"]
    assert text == GOOD
    jsonschema.validate(json.loads(text), CITY)
    constraint = server.engine.requests[-1].constraint
    assert constraint is not None and constraint.json_schema == CITY
