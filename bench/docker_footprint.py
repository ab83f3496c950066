"""The container image's footprint: its size, and the memory of a running container
when idle, before and after its first completion (a measurement, not a test).

    python bench/docker_footprint.py [IMAGE [DOCKER-RUN-OPTIONS...]]
        (default picolm-server:latest; e.g. --tmpfs /models to start the full image
        with no model, so that it serves the embedded one)

Runs the image on the host network on a free loopback port (as tests/deploy/test_docker.py
does), reads the container's memory from its cgroup through ``docker stats`` (usage less
page cache), and removes the container. The completion asks for the model the server
lists first. Start to healthy: until the image's own health check first passes (asked
every second here).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.server import free_port


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def memory_mib(name: str) -> float:
    usage = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", name).split("/")[0]
    value = usage.strip()
    for unit, factor in (("GiB", 1024.0), ("MiB", 1.0), ("KiB", 1 / 1024), ("B", 1 / 2**20)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    raise ValueError(value)


def main() -> None:
    image = sys.argv[1] if len(sys.argv) > 1 else "picolm-server:latest"
    options = sys.argv[2:]
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image))
    port = free_port()
    name = f"picolm-footprint-{uuid.uuid4().hex[:8]}"
    docker(
        "run", "--detach", "--name", name, "--network", "host", "--init",
        "--env", "PICOLM_SERVER__HOST=127.0.0.1", "--env", f"PICOLM_SERVER__PORT={port}",
        "--health-interval", "1s", *options, image,
    )  # fmt: skip
    try:
        started = time.monotonic()
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        ready = time.monotonic() - started
        while docker("inspect", "--format", "{{.State.Health.Status}}", name).strip() != "healthy":
            time.sleep(0.1)
        healthy = time.monotonic() - started
        time.sleep(5)
        idle = memory_mib(name)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=60).json()["data"]
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": models[0]["id"],
                "temperature": 0,
                "max_tokens": 32,
                "messages": [{"role": "user", "content": "Say hello."}],
            },
            timeout=600,
        )
        reply.raise_for_status()
        time.sleep(5)
        after = memory_mib(name)
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, check=False)
    print(
        json.dumps(
            {
                "image": image,
                "image_size_mb": round(size / 1e6, 1),
                "model": models[0]["id"],
                "start_to_health_s": round(ready, 1),
                "start_to_healthy_s": round(healthy, 1),
                "idle_memory_mib": round(idle, 1),
                "idle_memory_after_one_completion_mib": round(after, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
