"""The clients that write the schema into the prompt, as their users run them, against a
running server on the embedded SmolLM2: instructor (``Mode.JSON``, ``Mode.MD_JSON``),
pydantic-ai (``PromptedOutput``), the AI SDK (``generateObject`` in JSON mode, through
node and npm) and LiteLLM (its prompt fallback for a provider without a schema
parameter). Each returns a valid typed object at temperature 0, on the first try."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from tests.conftest import requires_llama
from tests.support.server import RunningServer, run_server

pytestmark = [requires_llama, pytest.mark.llama]

MODEL = "SmolLM2-135M-Instruct"
TEXT = "Paris is the capital of France. About 2,100,000 people live there. Extract the city."
AI_SDK_DIR = Path(__file__).parent / "ai_sdk"


class City(BaseModel):
    name: str
    country: str
    population: int


def check(city: City) -> None:
    assert isinstance(city, City)
    assert city.name == "Paris"
    assert isinstance(city.population, int)


def schema_requests(server: RunningServer) -> int:
    """Requests the server's log says were held to a schema from the prompt."""
    return server.log().count("schema=prompt")


@pytest.fixture(scope="module")
def any_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with ``prompt_schema: any`` (for a fenced block asked for in words)."""
    config = {"structured_output": {"prompt_schema": "any"}}
    with run_server(config, tmp_path_factory.mktemp("prompt-schema-any")) as server:
        yield server


def test_instructor_json(llama_server: RunningServer) -> None:
    import instructor

    client = instructor.from_openai(llama_server.client(max_retries=0), mode=instructor.Mode.JSON)
    before = schema_requests(llama_server)
    city = client.chat.completions.create(
        model=MODEL,
        response_model=City,
        temperature=0,
        max_retries=1,  # one attempt: no retry with the validation error
        messages=[{"role": "user", "content": TEXT}],
    )
    check(city)
    assert schema_requests(llama_server) == before + 1


def test_instructor_md_json(any_server: RunningServer) -> None:
    import instructor

    client = instructor.from_openai(any_server.client(max_retries=0), mode=instructor.Mode.MD_JSON)
    city = client.chat.completions.create(
        model=MODEL,
        response_model=City,
        temperature=0,
        max_retries=1,
        messages=[{"role": "user", "content": TEXT}],
    )
    check(city)
    assert schema_requests(any_server) == 1


def test_pydantic_ai_prompted_output(llama_server: RunningServer) -> None:
    from pydantic_ai import Agent, PromptedOutput
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=llama_server.openai_base_url, api_key="unused")
    agent = Agent(
        OpenAIChatModel(MODEL, provider=provider),
        output_type=PromptedOutput(City),
        model_settings={"temperature": 0},
        retries={"output": 0},
    )
    before = schema_requests(llama_server)
    check(agent.run_sync(TEXT).output)
    assert schema_requests(llama_server) == before + 1


def test_litellm_schema_prompt_fallback(
    llama_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model cost map ships with the package; without this LiteLLM fetches it.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    before = schema_requests(llama_server)
    # A provider whose models LiteLLM does not know to take a schema: it appends "Use this
    # JSON schema: ```json ...```" as a user message and asks for json_object.
    response = litellm.completion(
        model=f"zai/{MODEL}",
        api_base=llama_server.openai_base_url,
        api_key="unused",
        temperature=0,
        response_format=City,
        messages=[{"role": "user", "content": TEXT}],
        num_retries=0,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    check(City.model_validate_json(choice.message.content))
    assert schema_requests(llama_server) == before + 1


@pytest.fixture(scope="module")
def ai_sdk() -> Path:
    """The AI SDK installed with npm into its test folder (.ci/run installs it first)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("needs node and npm")
    if not (AI_SDK_DIR / "node_modules" / "ai").is_dir():
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=AI_SDK_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if installed.returncode != 0:
            pytest.skip(f"npm could not install the AI SDK: {installed.stderr[-300:]}")
    return Path(node)


def test_ai_sdk_generate_object_json_mode(llama_server: RunningServer, ai_sdk: Path) -> None:
    before = schema_requests(llama_server)
    run = subprocess.run(
        [str(ai_sdk), "generate_object.mjs"],
        cwd=AI_SDK_DIR,
        env={
            **os.environ,
            "PICOLM_BASE_URL": llama_server.openai_base_url,
            "PICOLM_MODEL": MODEL,
            "PICOLM_PROMPT": TEXT,
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    check(City.model_validate(result["object"]))
    assert schema_requests(llama_server) == before + 1
