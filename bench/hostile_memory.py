"""Memory a hostile (or merely heavy) client can make the server hold: the peak while a
burst runs and the idle memory after it, for each kind of request, on the embedded
model (llama.cpp).

For each scenario and each version (``--compare NAME=SRC``, interleaved so the machine's
load falls on all alike), a fresh server is started and warmed up with one small request
of every kind (so that what loads on first use, such as the embedding context, is in the
baseline), then:

- the resident memory (VmRSS) idle after the warm-up: *before*;
- the burst, with the peak (VmHWM, reset just before it through ``/proc/PID/clear_refs``);
- the resident memory idle ``--idle`` seconds after the burst: *after*.

The scenarios (what each request is, and how many run at once):

- ``tokenize-huge``: six ``/tokenize`` requests with pieces of a 3.8 MB text at once.
- ``tokenize-largest``: six ``/tokenize`` requests with pieces at once, each as long as
  the server tokenizes (``--tokenize-tokens``, the per-request cap).
- ``embeddings-largest``: the largest embeddings requests the server accepts: two at once
  of ``--embedding-inputs`` inputs each as long as the embedding context, then a batch of
  2048 short inputs (the most one request may hold).
- ``responses``: ``--responses`` short Responses requests (stored), then six with a 3.9 MB
  ``input`` at once (refused: over the context).
- ``chat-huge-input``: six chat completions with a 3.9 MB message at once (refused).

The ``responses`` burst leaves up to ``llama_cpp.cache_max_bytes`` (256 MiB) of prompt
states behind on purpose: ``--state-cache-mib 0`` measures it without them.

It prints a Markdown table per version, MiB, and the CPU seconds the server spent on
the burst.

    .venv/bin/python bench/hostile_memory.py --compare before=/path/to/old/src
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.startup_memory import cpu_seconds, proc_memory_kib
from tests.support.server import RunningServer, run_server

MIB = 1024 * 1024
MODEL = "SmolLM2-135M-Instruct"
HUGE_TEXT_CHARS = 3_900_000


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class Result:
    scenario: str
    version: str
    before: int
    peak: int
    after: int
    burst_seconds: float
    cpu: float
    statuses: dict[int, int]


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> int:
    try:
        with client.stream("POST", path, json=body) as response:
            for _ in response.iter_bytes():
                pass
            return response.status_code
    except httpx.HTTPError:
        return -1


def warm_up(client: httpx.Client) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert post(client, "/v1/chat/completions", chat) == 200
    responses = {"model": MODEL, "input": "Hi", "max_output_tokens": 2}
    assert post(client, "/v1/responses", responses) == 200
    assert post(client, "/v1/embeddings", {"model": MODEL, "input": "Hi"}) == 200
    assert post(client, "/tokenize", {"content": "Hi", "with_pieces": True}) == 200


def parallel(client: httpx.Client, requests: list[tuple[str, dict[str, Any]]]) -> dict[int, int]:
    statuses: dict[int, int] = {}
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        for status in pool.map(lambda item: post(client, *item), requests):
            statuses[status] = statuses.get(status, 0) + 1
    return statuses


def tokenize_huge(client: httpx.Client, args: argparse.Namespace) -> dict[int, int]:
    body = {"content": "x " * (3_800_000 // 2), "with_pieces": True}
    return parallel(client, [("/tokenize", body)] * 6)


def tokenize_largest(client: httpx.Client, args: argparse.Namespace) -> dict[int, int]:
    # "x x x ...": one token per "x" and one per " x" pair at most; SmolLM2 makes
    # " x" one token, so the text is about as many tokens as words.
    body = {"content": "x" + " x" * (args.tokenize_tokens - 2), "with_pieces": True}
    return parallel(client, [("/tokenize", body)] * 6)


def embeddings_largest(client: httpx.Client, args: argparse.Namespace) -> dict[int, int]:
    long_input = "hello" + " hello" * (args.embedding_tokens - 3)
    long_batch = {"model": MODEL, "input": [long_input] * args.embedding_inputs}
    wide_batch = {"model": MODEL, "input": [f"item {n}" for n in range(2048)]}
    statuses = parallel(client, [("/v1/embeddings", long_batch)] * 2)
    status = post(client, "/v1/embeddings", wide_batch)
    statuses[status] = statuses.get(status, 0) + 1
    return statuses


def responses(client: httpx.Client, args: argparse.Namespace) -> dict[int, int]:
    statuses: dict[int, int] = {}
    for n in range(args.responses):
        body = {
            "model": MODEL,
            "input": f"Say {n}.",
            "max_output_tokens": 2,
            "metadata": {"note": "é" * 500},
        }
        status = post(client, "/v1/responses", body)
        statuses[status] = statuses.get(status, 0) + 1
    huge = {"model": MODEL, "input": "y " * (HUGE_TEXT_CHARS // 2)}
    for status, count in parallel(client, [("/v1/responses", huge)] * 6).items():
        statuses[status] = statuses.get(status, 0) + count
    return statuses


def chat_huge_input(client: httpx.Client, args: argparse.Namespace) -> dict[int, int]:
    huge = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "y " * (HUGE_TEXT_CHARS // 2)}],
    }
    return parallel(client, [("/v1/chat/completions", huge)] * 6)


SCENARIOS: dict[str, Callable[[httpx.Client, argparse.Namespace], dict[int, int]]] = {
    "tokenize-huge": tokenize_huge,
    "tokenize-largest": tokenize_largest,
    "embeddings-largest": embeddings_largest,
    "responses": responses,
    "chat-huge-input": chat_huge_input,
}


def measure(
    scenario: str, version: str, src: str | None, args: argparse.Namespace, workdir: Path
) -> Result:
    env = {"PYTHONPATH": src} if src else {}
    config = {
        "server": {"max_body": 8 * MIB, "max_queue": 16},
        "responses": {"store_path": str(workdir / "responses.sqlite3")},
        "logging": {"level": "warning"},
    }
    if args.state_cache_mib is not None:
        # The prompt states llama.cpp keeps in host memory: a cache with a budget of its
        # own (llama_cpp.cache_max_bytes, 256 MiB), which a burst of distinct prompts fills.
        config["llama_cpp"] = {"cache_max_bytes": args.state_cache_mib * MIB}
    with run_server(config, workdir / f"{scenario}-{version}", env=env) as server:
        pid = server.process.pid
        client = httpx.Client(base_url=server.base_url, timeout=600)
        warm_up(client)
        time.sleep(args.idle)
        before = proc_memory_kib(pid)["VmRSS"] * 1024
        reset_peak(pid)
        cpu = cpu_seconds(pid)
        started = time.monotonic()
        statuses = SCENARIOS[scenario](client, args)
        burst = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu
        peak = proc_memory_kib(pid)["VmHWM"] * 1024
        time.sleep(args.idle)
        after = proc_memory_kib(pid)["VmRSS"] * 1024
        assert_alive(server, client)
    return Result(scenario, version, before, peak, after, burst, cpu, statuses)


def assert_alive(server: RunningServer, client: httpx.Client) -> None:
    response = client.get("/health")
    if response.status_code != 200:
        raise RuntimeError(f"server unhealthy after the burst: {response.text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=SRC")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--responses", type=int, default=150)
    parser.add_argument("--tokenize-tokens", type=int, default=300_000)
    parser.add_argument("--embedding-tokens", type=int, default=2048)
    parser.add_argument("--embedding-inputs", type=int, default=4)
    parser.add_argument(
        "--state-cache-mib",
        type=int,
        help="llama_cpp.cache_max_bytes in MiB (default: the server's own, 256 MiB)",
    )
    args = parser.parse_args()
    versions: list[tuple[str, str | None]] = [("now", None)]
    for item in args.compare:
        name, _, src = item.partition("=")
        versions.append((name, str(Path(src).resolve())))
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="hostile-memory-") as tmp:
        for scenario in args.scenario or list(SCENARIOS):
            for version, src in versions:
                result = measure(scenario, version, src, args, Path(tmp))
                results.append(result)
                print(
                    f"{scenario} {version}: before {result.before / MIB:.0f} MiB, peak "
                    f"{result.peak / MIB:.0f}, after {result.after / MIB:.0f}, "
                    f"{result.burst_seconds:.1f} s, cpu {result.cpu:.1f} s, {result.statuses}",
                    flush=True,
                )
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.uname().machine}\n")
    print(
        "| scenario | version | idle before | peak | idle after | after - before | burst "
        "| CPU | statuses |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r.scenario} | {r.version} | {r.before / MIB:.0f} MiB | {r.peak / MIB:.0f} MiB "
            f"| {r.after / MIB:.0f} MiB | {(r.after - r.before) / MIB:+.0f} MiB "
            f"| {r.burst_seconds:.1f} s | {r.cpu:.1f} s | {r.statuses} |"
        )


if __name__ == "__main__":
    main()
