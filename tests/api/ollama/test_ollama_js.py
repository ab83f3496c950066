"""The official ``ollama`` npm client (under node) against real servers: list, chat, a
stream, tools, an unknown model. Skips only when node or npm is absent (or npm cannot
install the client); .ci/run installs it first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.both_engines import ENGINES, Target, target_for

CLIENT_DIR = Path(__file__).parent / "ollama_js"
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


@pytest.fixture(scope="module")
def node() -> Path:
    """node, with the client installed with npm into its test folder."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("needs node and npm")
    if not (CLIENT_DIR / "node_modules" / "ollama").is_dir():
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=CLIENT_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if installed.returncode != 0:
            pytest.skip(f"npm could not install the ollama client: {installed.stderr[-300:]}")
    return Path(node)


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest) -> Target:
    return target_for(request)


def run_client(node: Path, target: Target) -> dict[str, Any]:
    directed = target.picolm is not None
    run = subprocess.run(
        [str(node), "client.mjs"],
        cwd=CLIENT_DIR,
        env={
            **os.environ,
            "OLLAMA_TEST_HOST": target.server.base_url,
            "OLLAMA_TEST_KEY": target.headers.get("Authorization", "").removeprefix("Bearer "),
            "OLLAMA_TEST_MODEL": target.model,
            "OLLAMA_TEST_PROMPT": "Say hello." + (" [[reply:Hello there]]" if directed else ""),
            "OLLAMA_TEST_TOOL_PROMPT": "Weather in Paris?"
            + (f" [[reply:{CALL}]]" if directed else ""),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    return result


def test_ollama_js_list_chat_stream_and_tools(node: Path, target: Target) -> None:
    result = run_client(node, target)
    assert f"{target.model}:latest" in result["models"]
    assert result["whole"] and result["eval_count"] > 0
    assert result["streamed"] == result["whole"] and result["last_done"] is True
    if target.picolm is not None:
        assert result["whole"] == "Hello there"
        (call,) = result["tool_calls"]
        assert call["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    else:  # SmolLM2-135M may answer in text; any call it makes is well-formed
        for call in result["tool_calls"] or []:
            assert call["function"]["name"] == "get_weather"
        assert result["tools_content"] or result["tool_calls"]
    assert result["missing"] == {
        "name": "ResponseError",
        "status": 404,
        "message": "model 'no-such-model' not found",
    }
