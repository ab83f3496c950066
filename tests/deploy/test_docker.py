"""The container image, run as users run it, answering real requests: the embedded
model with no configuration; PicoLM with a binary and model mounted into it (the
stand-in, or your own build when PICOLM_BINARY names one).

Runs when PICOLM_DOCKER_IMAGE names an image built from the Dockerfile (``make
docker-test`` builds one and sets it). Containers use the host's network (the server on
a free loopback port) so that nothing but loopback traffic is involved.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.support.fake_picolm import WRAPPER
from tests.support.server import free_port
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

IMAGE = os.environ.get("PICOLM_DOCKER_IMAGE", "")
DOCKER = shutil.which("docker")
USER_PICOLM = os.environ.get("PICOLM_BINARY", "")
REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = "/opt/picolm-server/bin/python"

pytestmark = pytest.mark.skipif(
    not (IMAGE and DOCKER),
    reason="set PICOLM_DOCKER_IMAGE to an image built from the Dockerfile "
    "(make docker-test builds one and runs these tests)",
)


def docker(*args: str, check: bool = True) -> str:
    assert DOCKER is not None
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done.stdout.strip()


@dataclass
class Container:
    name: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0)

    def logs(self) -> str:
        return docker("logs", self.name, check=False)

    def health_status(self) -> str:
        return docker("inspect", "--format", "{{.State.Health.Status}}", self.name)


@contextlib.contextmanager
def run_container(
    *,
    mounts: list[tuple[Path, str]] = (),  # type: ignore[assignment]
    env: dict[str, str] | None = None,
    startup_timeout: float = 180.0,
) -> Iterator[Container]:
    """The image on the host network; only the listen address and port are set (here a
    free loopback port instead of 0.0.0.0:8080). The image's own health check runs, asked
    every 2 s instead of 15 s."""
    port = free_port()
    name = f"picolm-test-{uuid.uuid4().hex[:10]}"
    settings = {"PICOLM_SERVER__HOST": "127.0.0.1", "PICOLM_SERVER__PORT": str(port), **(env or {})}
    args = ["run", "--detach", "--name", name, "--network", "host", "--init"]
    args += ["--health-interval", "2s"]
    for key, value in settings.items():
        args += ["--env", f"{key}={value}"]
    for source, target in mounts:
        args += ["--volume", f"{source}:{target}:ro"]
    docker(*args, IMAGE)
    container = Container(name, port)
    try:
        _wait_until_listening(container, startup_timeout)
        yield container
    finally:
        docker("rm", "--force", name, check=False)


def _wait_until_listening(container: Container, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if docker("inspect", "--format", "{{.State.Running}}", container.name) != "true":
            raise AssertionError(f"the container stopped:\n{container.logs()}")
        try:
            httpx.get(f"{container.base_url}/health", timeout=2.0)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"the server did not start within {timeout} s:\n{container.logs()}")


def wait_for_health(container: Container, wanted: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = container.health_status()
        if status == wanted:
            return
        time.sleep(0.5)
    raise AssertionError(f"health {status!r}, not {wanted!r}, after {timeout} s")


# ---- the embedded model, no configuration ------------------------------------------------


@pytest.fixture(scope="module")
def embedded() -> Iterator[Container]:
    with run_container() as container:
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


# ---- PicoLM, mounted by the user ---------------------------------------------------------


@pytest.fixture(scope="module")
def picolm_mounts(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """The binary (yours, or the stand-in run by the image's Python) and a tiny model,
    with the shipped deploy/docker/picolm.yaml as the configuration."""
    root = tmp_path_factory.mktemp("docker-picolm")
    root.chmod(0o755)
    model = build_tiny_llama_gguf(root / "tiny.gguf")
    model.chmod(0o644)
    mounts = [
        (model, "/models/model.gguf"),
        (REPO / "deploy" / "docker" / "picolm.yaml", "/etc/picolm-server/config.yaml"),
    ]
    if USER_PICOLM:
        return [(Path(USER_PICOLM).resolve(), "/opt/picolm/picolm"), *mounts]
    wrapper = root / "picolm"
    wrapper.write_text(WRAPPER.format(python=VENV_PYTHON, paths=["/opt/stand-in"]))
    wrapper.chmod(0o755)
    return [(wrapper, "/opt/picolm/picolm"), (REPO / "tests", "/opt/stand-in/tests"), *mounts]


def test_picolm_with_a_mounted_binary_and_model(picolm_mounts: list[tuple[Path, str]]) -> None:
    env = {"PICOLM_CONFIG": "/etc/picolm-server/config.yaml"}
    with run_container(mounts=picolm_mounts, env=env) as container:
        client = container.client()
        models = client.models.list()
        assert [m.id for m in models.data] == ["picolm-local"]
        messages = [
            {"role": "system", "content": "You are a robot that talks about the sea."},
            {"role": "user", "content": "hello robot, how is the world today?"},
        ]
        cached = []
        for question in ("what is deep in the sea?", "and the wind in the trees?"):
            completion = client.chat.completions.create(
                model="picolm-local",
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
        # Saved prompt state works for the unprivileged user (its cache directory).
        assert cached[0] == 0 and cached[1] > 0
        stream = client.chat.completions.create(
            model="picolm-local",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=3,
            stream=True,
        )
        assert list(stream)[-1].choices[0].finish_reason == "length"
        wait_for_health(container, "healthy")
