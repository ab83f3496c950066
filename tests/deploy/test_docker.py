"""The container image, run as users run it, answering real requests: the embedded
model when /models holds none; the image's own PicoLM on the model built into it
(MODEL_URL), and on a model mounted into /models; your own PicoLM build mounted over the
image's when PICOLM_BINARY names one.

Runs when PICOLM_DOCKER_IMAGE names an image built from the Dockerfile with the tiny
LLaMA as its model (``make docker-test`` builds one, tests/support/image_build.py, and
sets it). Its PicoLM is PicoLM when the build was given a checkout, the stand-in
otherwise.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai.types.chat import ChatCompletion

from tests.support.containers import DOCKER, Container, docker, run_container, wait_for_health
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

IMAGE = os.environ.get("PICOLM_DOCKER_IMAGE", "")
USER_PICOLM = os.environ.get("PICOLM_BINARY", "")

pytestmark = pytest.mark.skipif(
    not (IMAGE and DOCKER),
    reason="set PICOLM_DOCKER_IMAGE to an image built from the Dockerfile "
    "(make docker-test builds one and runs these tests)",
)
# An empty /models: the container then serves the embedded model.
NO_MODEL = ("--tmpfs", "/models")


# ---- the embedded model, no configuration ------------------------------------------------


@pytest.fixture(scope="module")
def embedded() -> Iterator[Container]:
    with run_container(IMAGE, options=NO_MODEL) as container:
        yield container


def test_embedded_model_answers_without_configuration(embedded: Container) -> None:
    def ask() -> ChatCompletion:
        return embedded.client().chat.completions.create(
            model="SmolLM2-135M-Instruct",
            temperature=0,
            max_tokens=20,
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
        )

    first, second = ask(), ask()
    assert first.model == "SmolLM2-135M-Instruct"
    assert first.choices[0].message.content
    assert first.choices[0].finish_reason in ("stop", "length")
    assert first.usage is not None and 0 < first.usage.completion_tokens <= 20
    # Greedy decoding by the real model: the same answer twice.
    assert second.choices[0].message.content == first.choices[0].message.content


def test_embedded_model_streams(embedded: Container) -> None:
    stream = embedded.client().chat.completions.create(
        model="SmolLM2-135M-Instruct",
        temperature=0,
        max_tokens=8,
        stream=True,
        messages=[{"role": "user", "content": "Count to five."}],
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_health_endpoint_and_the_images_health_check(embedded: Container) -> None:
    health = httpx.get(f"{embedded.base_url}/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["model"] == "SmolLM2-135M-Instruct"
    wait_for_health(embedded, "healthy")


def test_server_runs_as_a_user_without_privileges(embedded: Container) -> None:
    uid = docker("exec", embedded.name, "id", "-u")
    assert uid != "0"
    # The server process itself, not just exec's default user.
    owners = docker("exec", embedded.name, "sh", "-c", "stat -c %u /proc/[0-9]*/ | sort -u")
    assert "0" not in owners.split()


# ---- the image's PicoLM -------------------------------------------------------------------


def converse(container: Container, model: str = "picolm-local") -> None:
    """Two turns of one conversation and a stream: the second turn reuses the first's
    saved prompt state (in the cache directory the unprivileged user owns)."""
    client = container.client()
    assert [m.id for m in client.models.list().data] == [model]
    messages = [
        {"role": "system", "content": "You are a robot that talks about the sea."},
        {"role": "user", "content": "hello robot, how is the world today?"},
    ]
    cached = []
    for question in ("what is deep in the sea?", "and the wind in the trees?"):
        completion = client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=5,
            temperature=0,
        )
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 5
        assert completion.choices[0].finish_reason == "length"
        details = completion.usage.prompt_tokens_details
        cached.append(details.cached_tokens if details else 0)
        content = completion.choices[0].message.content or ""
        messages += [
            {"role": "assistant", "content": content},
            {"role": "user", "content": question},
        ]
    assert cached[0] == 0 and cached[1] > 0
    stream = client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=3,
        stream=True,
    )
    assert list(stream)[-1].choices[0].finish_reason == "length"


def test_the_images_picolm_serves_the_model_built_into_it() -> None:
    with run_container(IMAGE) as container:
        logs = container.logs()
        assert re.search(
            r"engine picolm \(/usr/local/bin/picolm\), context \d+ tokens, "
            r"model file: /models/model\.gguf",
            logs,
        ), logs
        converse(container)
        wait_for_health(container, "healthy")


def test_a_model_mounted_into_models_is_served_by_the_images_picolm(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    models.chmod(0o755)
    build_tiny_llama_gguf(models / "mine.gguf", seed=1).chmod(0o644)
    with run_container(
        IMAGE, mounts=[(models, "/models")], env={"MODEL_NAME": "mine.gguf"}
    ) as container:
        assert "model file: /models/mine.gguf" in container.logs()
        converse(container)


@pytest.mark.skipif(not USER_PICOLM, reason="set PICOLM_BINARY to a PicoLM build of your own")
def test_your_own_picolm_build_mounted_over_the_images() -> None:
    mounts = [(Path(USER_PICOLM).resolve(), "/usr/local/bin/picolm")]
    with run_container(IMAGE, mounts=mounts) as container:
        converse(container)
