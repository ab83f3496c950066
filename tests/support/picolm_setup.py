"""The server on the PicoLM stand-in: files, configuration and the run history."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.support.fake_picolm import (
    LOG_ENV,
    Invocation,
    install_fake_picolm,
    read_history,
)
from tests.support.server import RunningServer, run_server
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

MODEL_ID = "tiny-picolm"


@dataclass
class PicoLMServer:
    """A running server plus the history of the fake PicoLM runs it started."""

    server: RunningServer
    log_path: Path

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def history(self) -> list[Invocation]:
        return read_history(self.log_path)

    def runs_with(self, marker: str) -> list[Invocation]:
        return [run for run in self.history() if run.prompt and marker in run.prompt]

    def wait_for_run(self, marker: str, *, children: int = 0, timeout: float = 20.0) -> Invocation:
        """The (first) run whose prompt contains ``marker``, once it has ``children``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs_with(marker)
            if runs and len(runs[0].child_pids) >= children:
                return runs[0]
            time.sleep(0.02)
        raise AssertionError(f"no engine run with {marker!r} in its prompt:\n{self.log()}")


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_until_gone(pids: list[int], timeout: float) -> float:
    """Poll until every pid is gone; return the seconds it took (raise after ``timeout``)."""
    started = time.monotonic()
    while not all(process_gone(pid) for pid in pids):
        if time.monotonic() - started > timeout:
            alive = [pid for pid in pids if not process_gone(pid)]
            raise AssertionError(f"processes still running after {timeout} s: {alive}")
        time.sleep(0.01)
    return time.monotonic() - started


@dataclass
class PicoLMFiles:
    binary: Path
    model: Path
    stop_model: Path
    root: Path

    @classmethod
    def create(cls, root: Path) -> PicoLMFiles:
        return cls(
            binary=install_fake_picolm(root),
            model=build_tiny_llama_gguf(root / "tiny.gguf"),
            stop_model=build_tiny_llama_gguf(root / "tiny-stop.gguf", stop_at_once=True),
            root=root,
        )

    def config(self, **sections: dict[str, Any]) -> dict[str, Any]:
        """A server configuration on the fake PicoLM; ``sections`` override key by key."""
        config: dict[str, Any] = {
            "engine": "picolm",
            "server": {"max_concurrent": 1, "max_queue": 8, "max_body": 65536},
            "picolm": {
                "binary": str(self.binary),
                "model_path": str(self.model),
                "model_id": MODEL_ID,
                "threads": 1,
                "max_tokens": 32,
                "timeout_seconds": 60,
                "prompt_cache": False,
            },
            "logging": {"level": "info"},
        }
        for name, values in sections.items():
            config[name] = {**config.get(name, {}), **values}
        return config

    @contextlib.contextmanager
    def serve(
        self, workdir: Path, program: list[str] | None = None, **sections: dict[str, Any]
    ) -> Iterator[PicoLMServer]:
        log_path = workdir / "fake-picolm.jsonl"
        env = {LOG_ENV: str(log_path)}
        with run_server(self.config(**sections), workdir, env=env, program=program) as server:
            yield PicoLMServer(server, log_path)
