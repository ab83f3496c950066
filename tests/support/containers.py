"""Running the image as users run it, for tests: ``docker run`` on the host network (the
server on a free loopback port, so that nothing but loopback traffic is involved), the
image's own health check asked every 2 s, and the container removed afterwards."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

from tests.support.server import free_port

DOCKER = shutil.which("docker")


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
    # Seconds from `docker run` to the server answering /health.
    start_seconds: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 600.0) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0, timeout=timeout
        )

    def logs(self) -> str:
        """What the container wrote, stdout and stderr together."""
        assert DOCKER is not None
        done = subprocess.run(
            [DOCKER, "logs", self.name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        return done.stdout

    def health_status(self) -> str:
        return docker("inspect", "--format", "{{.State.Health.Status}}", self.name)


@contextlib.contextmanager
def run_container(
    image: str,
    *,
    mounts: Sequence[tuple[Path, str]] = (),
    env: dict[str, str] | None = None,
    options: Sequence[str] = (),
    startup_timeout: float = 180.0,
) -> Iterator[Container]:
    """The image on the host network; only the listen address and port are set (here a
    free loopback port instead of 0.0.0.0:8080). ``options`` go to ``docker run``."""
    port = free_port()
    name = f"picolm-test-{uuid.uuid4().hex[:10]}"
    settings = {"PICOLM_SERVER__HOST": "127.0.0.1", "PICOLM_SERVER__PORT": str(port), **(env or {})}
    args = ["run", "--detach", "--name", name, "--network", "host", "--init"]
    args += ["--health-interval", "2s", *options]
    for key, value in settings.items():
        args += ["--env", f"{key}={value}"]
    for source, target in mounts:
        args += ["--volume", f"{source}:{target}:ro"]
    started = time.monotonic()
    docker(*args, image)
    container = Container(name, port)
    try:
        _wait_until_listening(container, startup_timeout)
        container.start_seconds = time.monotonic() - started
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
