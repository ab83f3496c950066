"""The clients that write the schema into the prompt, as their users run them, on the
application in-process over a scripted engine: instructor (``Mode.JSON``,
``Mode.MD_JSON``), pydantic-ai (``PromptedOutput``) and LiteLLM (its prompt fallback
for a provider without a schema parameter), each given an openai client on the app's
transport. The server finds each client's own wording of the schema, holds the engine to
it, and the client gets its typed object on the first try. The AI SDK runs under node,
in a process of its own, so it needs a real socket: it is in
test_schema_in_prompt_clients_on_llama.py, with a Python client on the real SmolLM2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from tests.support.inprocess import InProcessServer, serve_in_process
from tests.support.picolm_setup import MODEL_ID
from tests.support.scripted_engine import GRAMMAR_ABILITIES, SCHEMA_ABILITIES, engine_of_kind

GOOD = '{"name": "Paris", "country": "France", "population": 2100000}'
TEXT = (
    "Paris is the capital of France. About 2,100,000 people live there. Extract the city."
    f" [[reply:{GOOD}]]"
)


class City(BaseModel):
    name: str
    country: str
    population: int


def check(city: City) -> None:
    assert isinstance(city, City)
    assert city.name == "Paris"
    assert isinstance(city.population, int)


def schema_requests(caplog: pytest.LogCaptureFixture) -> int:
    """Requests the server's log says were held to a schema from the prompt."""
    return sum(
        record.getMessage().endswith("schema=prompt")
        for record in caplog.records
        if record.name == "picolm_server.access"
    )


def held_to_city(server: InProcessServer) -> None:
    """The engine was held to the client's schema of a City."""
    constraint = server.engine.requests[-1].constraint
    assert constraint is not None and constraint.json_schema is not None
    assert set(constraint.json_schema["properties"]) == {"name", "country", "population"}


@pytest.fixture(params=["grammar", "schema"])
async def server(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[InProcessServer]:
    caplog.set_level("INFO", logger="picolm_server.access")
    abilities = GRAMMAR_ABILITIES if request.param == "grammar" else SCHEMA_ABILITIES
    # prompt_schema "any": a fenced block asked for in words (MD_JSON) is taken too.
    async with serve_in_process(
        engine_of_kind(abilities, MODEL_ID), structured_output={"prompt_schema": "any"}
    ) as app:
        yield app


pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ["JSON", "MD_JSON"])
async def test_instructor(
    server: InProcessServer, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    import instructor

    client = instructor.from_openai(
        server.client(max_retries=0), mode=getattr(instructor.Mode, mode)
    )
    city = await client.chat.completions.create(
        model=MODEL_ID,
        response_model=City,
        temperature=0,
        max_retries=1,  # one attempt: no retry with the validation error
        messages=[{"role": "user", "content": TEXT}],
    )
    check(city)
    assert schema_requests(caplog) == len(server.engine.requests) == 1
    held_to_city(server)


async def test_pydantic_ai_prompted_output(
    server: InProcessServer, caplog: pytest.LogCaptureFixture
) -> None:
    from pydantic_ai import Agent, PromptedOutput
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(openai_client=server.client(max_retries=0))
    agent = Agent(
        OpenAIChatModel(MODEL_ID, provider=provider),
        output_type=PromptedOutput(City),
        model_settings={"temperature": 0},
        retries={"output": 0},
    )
    check((await agent.run(TEXT)).output)
    assert schema_requests(caplog) == len(server.engine.requests) == 1
    held_to_city(server)


async def test_litellm_schema_prompt_fallback(
    server: InProcessServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model cost map ships with the package; without this LiteLLM fetches it.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    # A provider whose models LiteLLM does not know to take a schema: it appends "Use this
    # JSON schema: ```json ...```" as a user message and asks for json_object.
    response: Any = await litellm.acompletion(
        model=f"zai/{MODEL_ID}",
        api_base=server.openai_base_url,
        api_key=server.api_key,
        client=server.client(max_retries=0),
        temperature=0,
        response_format=City,
        messages=[{"role": "user", "content": TEXT}],
        num_retries=0,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    check(City.model_validate_json(choice.message.content))
    assert schema_requests(caplog) == len(server.engine.requests) == 1
    held_to_city(server)
    # LiteLLM's own wording reached the server: its appended user message.
    assert "Use this JSON schema" in server.engine.requests[-1].prompt
