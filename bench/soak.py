"""A bounded soak: concurrent clients for a fixed time, some of them hanging up mid-stream.

Starts the real server (``python -m picolm_server``) on one engine and runs ``--clients``
clients against it for ``--duration`` seconds after ``--warmup`` seconds of warm-up. Each
client holds a multi-turn conversation (so PicoLM's saved prompt states are used and
evicted), streams most requests, and closes ``--disconnect`` of the streams after the
first content chunk. It reports requests, statuses, errors, p50/p99 latency of the
completed requests, and the server's RSS, open file descriptors and child processes at
the end of the warm-up and at the end (after the server is idle again), processes of the
engine left anywhere on the machine, and the size of the prompt-state directory.

    .venv/bin/python bench/soak.py --engine picolm --duration 180    # PicoLM stand-in
    PICOLM_BINARY=/path/to/picolm PICOLM_MODEL=/path/to/model.gguf \\
        .venv/bin/python bench/soak.py --engine picolm                # real PicoLM
    .venv/bin/python bench/soak.py --engine llama_cpp                 # SmolLM2 on llama.cpp
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fake_picolm import install_fake_picolm
from tests.support.server import RunningServer, run_server
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

QUESTIONS = [
    "Hello! Do you sell screws?",
    "What sizes do you have for wood?",
    "And for metal sheets?",
    "How much is a box of one hundred?",
    "Do you deliver on Saturday morning?",
    "Thank you, that is all for now.",
]
SYSTEM = "You are a helpful assistant for a small hardware shop. Answer briefly."


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    disconnects: int = 0
    measuring: bool = False

    def note(self, status: str, latency: float | None = None, error: str | None = None) -> None:
        if not self.measuring:
            return
        self.statuses[status] += 1
        if latency is not None:
            self.latencies.append(latency)
        if error is not None:
            self.errors.append(error)


@dataclass
class Snapshot:
    rss_mb: float
    fds: int
    children: int

    @classmethod
    def of(cls, pid: int) -> Snapshot:
        process = psutil.Process(pid)
        return cls(
            rss_mb=process.memory_info().rss / 2**20,
            fds=process.num_fds(),
            children=len(process.children(recursive=True)),
        )


async def one_request(
    http: httpx.AsyncClient, model: str, messages: list[dict[str, str]], args: Any, tally: Tally
) -> str:
    """Send one chat completion; returns the reply text (empty when cut or failed)."""
    stream = random.random() < 0.75
    hang_up = stream and random.random() < args.disconnect
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": args.max_tokens,
        "stream": stream,
    }
    started = time.monotonic()
    if not stream:
        response = await http.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            tally.note(str(response.status_code), error=response.text[:200])
            return ""
        tally.note("200", time.monotonic() - started)
        return str(response.json()["choices"][0]["message"]["content"] or "")
    reply = ""
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            tally.note(str(response.status_code), error=response.text[:200])
            return ""
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[len("data: ") :]
            if payload == "[DONE]":
                tally.note("200", time.monotonic() - started)
                return reply
            event = json.loads(payload)
            if "error" in event:
                tally.note("error event", error=payload[:200])
                return ""
            if event["choices"]:
                reply += event["choices"][0]["delta"].get("content") or ""
            if hang_up and reply:
                tally.disconnects += tally.measuring
                tally.note("disconnected")
                return ""  # leaving the block closes the connection mid-stream
    tally.note("no [DONE]", error="stream ended without [DONE]")
    return ""


async def client_loop(server: RunningServer, model: str, args: Any, tally: Tally) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=600) as http:
        messages = [{"role": "system", "content": args.system}]
        while True:
            messages.append({"role": "user", "content": random.choice(QUESTIONS)})
            try:
                reply = await one_request(http, model, messages, args, tally)
            except (httpx.HTTPError, ValueError) as exc:
                tally.note("exception", error=repr(exc))
                reply = ""
            messages.append({"role": "assistant", "content": reply})
            if len(messages) > 2 * args.turns:
                messages = [{"role": "system", "content": args.system}]


def engine_processes(binary: str) -> list[int]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(binary in part for part in cmdline[:2]):
            found.append(process.info["pid"])
    return found


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


async def run_clients(
    server: RunningServer, model: str, args: Any, tally: Tally, seconds: float
) -> None:
    clients = [
        asyncio.create_task(client_loop(server, model, args, tally)) for _ in range(args.clients)
    ]
    await asyncio.sleep(seconds)
    for task in clients:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)


def idle_snapshot(server: RunningServer) -> Snapshot:
    """The server's figures once nothing runs or waits, and closed connections and
    finished processes have been let go."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        health = httpx.get(f"{server.base_url}/health", timeout=30).json()
        if health["running"] == 0 and health["queued"] == 0:
            break
        time.sleep(0.2)
    time.sleep(2.0)
    return Snapshot.of(server.process.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["picolm", "llama_cpp"], default="picolm")
    parser.add_argument("--duration", type=float, default=180.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--disconnect", type=float, default=0.2, help="share of streams cut")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4, help="turns before a new conversation")
    args = parser.parse_args()
    args.system = SYSTEM

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    cache_dir = workdir / "prompt-states"
    binary = os.environ.get("PICOLM_BINARY", "")
    config: dict[str, Any] = {
        "engine": args.engine,
        "server": {"max_concurrent": 1, "max_queue": 2 * args.clients},
        "logging": {"level": "warning", "log_requests": False},
    }
    if args.engine == "picolm":
        stand_in = not binary
        if stand_in:
            binary = str(install_fake_picolm(workdir))
            model_path = str(build_tiny_llama_gguf(workdir / "tiny.gguf"))
            # The stand-in is instant; a little time per token makes streams last long
            # enough to be cut in the middle.
            args.system = SYSTEM + " [[slow:0.01]]"
        else:
            model_path = os.environ["PICOLM_MODEL"]
        config["picolm"] = {
            "binary": binary,
            "model_path": model_path,
            "model_id": "soak",
            "threads": 2,
            "prompt_cache": True,
            "cache_dir": str(cache_dir),
            "cache_max_bytes": 64 * 2**20,
        }
        engine_name = "PicoLM stand-in" if stand_in else f"PicoLM ({Path(model_path).name})"
    else:
        config["llama_cpp"] = {"model_id": "soak", "threads": 2}
        engine_name = "llama.cpp, SmolLM2-135M-Instruct"

    with run_server(config, workdir) as server:
        tally = Tally()
        asyncio.run(run_clients(server, "soak", args, tally, args.warmup))
        start = idle_snapshot(server)
        tally.measuring = True
        asyncio.run(run_clients(server, "soak", args, tally, args.duration))
        tally.measuring = False
        end = idle_snapshot(server)
        leftover = engine_processes(binary) if binary else []
        cache_bytes = directory_bytes(cache_dir)
        alive = server.process.poll() is None

    latencies = sorted(tally.latencies)
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
    total = sum(tally.statuses.values())
    failures = total - tally.statuses["200"] - tally.statuses["disconnected"]
    summary = {
        "engine": engine_name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "duration_s": args.duration,
        "clients": args.clients,
        "requests": total,
        "statuses": dict(tally.statuses),
        "errors": failures,
        "p50_s": round(p50, 3),
        "p99_s": round(p99, 3),
        "rss_start_mb": round(start.rss_mb, 1),
        "rss_end_mb": round(end.rss_mb, 1),
        "fds_start": start.fds,
        "fds_end": end.fds,
        "children_end": end.children,
        "engine_processes_left": len(leftover),
        "prompt_state_bytes": cache_bytes,
        "server_alive": alive,
    }
    print(json.dumps(summary, indent=2))
    for error in tally.errors[:5]:
        print("error:", error)


if __name__ == "__main__":
    main()
