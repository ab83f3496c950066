"""Run the real server as a user would (``python -m picolm_server -config FILE``) on a free
port, for tests and benchmarks that talk HTTP to it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    api_key: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: Any) -> Any:
        import openai

        return openai.OpenAI(
            base_url=self.openai_base_url, api_key=self.api_key or "unused", **kwargs
        )

    def async_client(self, **kwargs: Any) -> Any:
        import openai

        return openai.AsyncOpenAI(
            base_url=self.openai_base_url, api_key=self.api_key or "unused", **kwargs
        )


@contextlib.contextmanager
def run_server(
    config: dict[str, Any],
    workdir: Path,
    *,
    env: dict[str, str] | None = None,
    startup_timeout: float = 120.0,
    extra_args: list[str] | None = None,
    program: list[str] | None = None,
) -> Iterator[RunningServer]:
    """Start the server with ``config`` (the YAML layout) and stop it afterwards.
    ``program``: the Python arguments that start it (default ``-m picolm_server``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {**config, "server": {**config.get("server", {}), "host": "127.0.0.1", "port": port}}
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / "server.log"
    # Default state directories inside the test's own folder, never the user's.
    process_env = {**os.environ, "XDG_CACHE_HOME": str(workdir / "xdg-cache"), **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                *(program or ["-m", "picolm_server"]),
                "-config",
                str(config_path),
                *(extra_args or []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=process_env,
            start_new_session=True,
        )
    server = RunningServer(process, port, log_path, config["server"].get("api_key", ""))
    try:
        _wait_until_listening(server, startup_timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_listening(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            httpx.get(f"{server.base_url}/health", timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not start within {timeout} s:\n{server.log()}")
