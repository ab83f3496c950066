"""The clients that write the schema into the prompt, against a running server on the
embedded SmolLM2: instructor (``Mode.JSON``), end to end on the real model, and the AI
SDK (``generateObject`` in JSON mode, through node and npm), which runs in a node
process of its own and so needs the server on a real socket. Each returns a valid typed
object at temperature 0, on the first try. The other clients (instructor's MD_JSON,
pydantic-ai, LiteLLM) are tested in-process in test_schema_in_prompt_clients.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.api.chat.test_schema_in_prompt_clients import City, check
from tests.conftest import requires_llama
from tests.support.server import RunningServer

pytestmark = [requires_llama, pytest.mark.llama]

MODEL = "SmolLM2-135M-Instruct"
TEXT = "Paris is the capital of France. About 2,100,000 people live there. Extract the city."
AI_SDK_DIR = Path(__file__).parent / "ai_sdk"


def schema_requests(server: RunningServer) -> int:
    """Requests the server's log says were held to a schema from the prompt."""
    return server.log().count("schema=prompt")


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
