"""Start-to-ready time and idle memory of the server, for each engine, and where they go.

Starts the real server (``python -m picolm_server -config FILE``) ``--runs`` times per
engine (alternating engines, and versions with ``--compare``, so that the machine's load
falls on all alike) on a free port and measures, for each start: the time from starting
the process to the first ``200`` from ``GET /health`` (polled every 5 ms), the CPU time
the server used until then (which a busy machine inflates less than the wall time), and,
after ``--idle`` seconds of idling, the server's resident memory (VmRSS) and its peak
(VmHWM) from ``/proc``. With ``--after-request`` it then sends one short chat completion
and reads VmRSS again (what is loaded on first use shows there), then a second one: the
two requests' times show what loading on first use costs the first. It prints the median
and the range of each, in MiB and in MB, as a Markdown table.

With ``--imports N`` it also says where the start goes, per top-level package, for each
engine: the time spent in each package's own module bodies (``python -X importtime``,
wall-clock time, which a busy machine inflates; the median of N runs) and the resident
memory each adds (every module's loading is wrapped: what VmRSS grows by while it loads,
less what the modules it imports add, is charged to its package), then what building
the core (engine, tokenizer, chat template) and the app add. Memory grows in pages and
allocator arenas, so a small package's figure can be off by a fraction of a MiB, one
way or the other; the sums hold.

    .venv/bin/python bench/startup_memory.py --runs 7 --imports 3 --after-request \\
        --picolm-binary /path/to/picolm --picolm-model /path/to/model.gguf \\
        --compare before=/path/to/older/checkout/src

The llama.cpp engine is measured on its embedded model when the ``llama`` extra is
installed (``--skip-llama`` to leave it out). PicoLM runs no process until a request
comes, so the PicoLM figures are the server alone. The server runs with Python's
bytecode cache on (as after ``pip install``, even where ``PYTHONDONTWRITEBYTECODE`` is
set for development), after one start per engine that is not counted.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.server import free_port

MIB = 1024 * 1024
MB = 1000 * 1000

# An installed package has its bytecode compiled; a server that compiled its own
# modules at every start would be measured doing work it does not do in use.
CHILD_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def health_status(port: int) -> int | None:
    """The status of ``GET /health``, or None when nothing answers yet (a raw request:
    the poller must not slow down the server it measures)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def proc_memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (it does not count time spent waiting
    for a CPU, which on a busy machine dominates the wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    ready: float  # seconds from process start to the first 200 from /health
    cpu: float  # CPU seconds the server used until then
    rss: int  # bytes resident after idling
    peak: int  # the process's peak resident bytes until then
    rss_after_request: int | None  # bytes resident after one chat completion
    first_request: float | None  # seconds of the first chat completion after start
    second_request: float | None  # seconds of the next one (the same shape)


def write_config(config: dict[str, Any], workdir: Path, port: int) -> Path:
    config = {**config, "server": {"host": "127.0.0.1", "port": port}}
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def one_request(port: int, model: str, content: str) -> float:
    """Seconds one short chat completion takes, request to response."""
    started = time.perf_counter()
    response = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4},
        timeout=120,
    )
    response.raise_for_status()
    return time.perf_counter() - started


def one_start(
    config: dict[str, Any], env: dict[str, str], workdir: Path, idle: float, after_request: bool
) -> Sample:
    port = free_port()
    config_path = write_config(config, workdir, port)
    log = (workdir / "server.log").open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "picolm_server", "-config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError((workdir / "server.log").read_text())
            if health_status(port) == 200:
                ready = time.perf_counter() - started
                cpu = cpu_seconds(process.pid)
                break
            time.sleep(0.005)
        time.sleep(idle)
        memory = proc_memory_kib(process.pid)
        after = first = second = None
        if after_request:
            # The first request loads what the server leaves for its first use (the
            # request types, the request path); the second, of the same shape (another
            # prompt, so nothing is reused), shows what that cost.
            base = f"http://127.0.0.1:{port}/v1"
            model = httpx.get(f"{base}/models", timeout=60).json()["data"][0]["id"]
            first = one_request(port, model, "Hi")
            time.sleep(idle)
            after = proc_memory_kib(process.pid)["VmRSS"] * 1024
            second = one_request(port, model, "Ho")
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
    return Sample(ready, cpu, memory["VmRSS"] * 1024, memory["VmHWM"] * 1024, after, first, second)


# ---- where the start goes ------------------------------------------------------------

# What ``picolm_server.cli.main`` does before it serves: every import, the settings, the
# core and the app. With "memory" as its second argument it charges each top-level
# package for the resident memory its own modules add while they load (a module's
# ``create_module`` and ``exec_module`` are wrapped; what the modules it imports add is
# charged to them), and what building the core adds to "(building the core)".
BUILD = """
import collections, importlib.abc, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
charged = collections.Counter(python=rss())
stack = []
class Measured:
    def __init__(self, loader, name):
        self._loader, self._name = loader, name
    def __getattr__(self, attribute):
        return getattr(self._loader, attribute)
    def create_module(self, spec):
        stack.append([rss(), 0])
        return self._loader.create_module(spec)
    def exec_module(self, module):
        try:
            self._loader.exec_module(module)
        finally:
            before, children = stack.pop()
            added = rss() - before
            charged[self._name.split(".")[0]] += added - children
            if stack:
                stack[-1][1] += added
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = Measured(spec.loader, name)
                return spec
        return None
if sys.argv[2:] == ["memory"]:
    sys.meta_path.insert(0, Finder())
from picolm_server import cli
try:
    from picolm_server.server import runner
except ImportError:  # a tree from before the server package
    from picolm_server import runner
built = rss()
settings = cli.load_from_args(["-config", sys.argv[1]])
# build_service is the name in code before the core was named core everywhere: the
# benchmark runs the old code beside the new.
build = getattr(cli, "build_core", None) or cli.build_service
core = build(settings)
cli.create_app(core, engine_name=settings.resolved_engine())
charged["(building the core)"] = rss() - built
print(json.dumps(charged))
"""

_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_times(config_path: Path, env: dict[str, str]) -> tuple[int, dict[str, float]]:
    """How many modules load, and the seconds (wall clock) spent in each top-level
    package's own module bodies, from one ``-X importtime`` run."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", BUILD, str(config_path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    modules = 0
    seconds: collections.Counter[str] = collections.Counter()
    for line in result.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            modules += 1
            seconds[match.group(4).split(".")[0]] += int(match.group(1)) / 1e6
    return modules, dict(seconds)


def memory_by_package(config_path: Path, env: dict[str, str]) -> dict[str, int]:
    """Resident bytes each top-level package's own modules add while loading."""
    result = subprocess.run(
        [sys.executable, "-c", BUILD, str(config_path), "memory"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    charged: dict[str, int] = json.loads(result.stdout.splitlines()[-1])
    return charged


def import_breakdown(
    name: str, config: dict[str, Any], env: dict[str, str], workdir: Path, runs: int
) -> None:
    config_path = write_config(config, workdir, free_port())
    times: dict[str, list[float]] = collections.defaultdict(list)
    modules = 0
    for _ in range(runs):
        modules, seconds = import_times(config_path, env)
        for package, value in seconds.items():
            times[package].append(value)
    added = memory_by_package(config_path, env)
    total_time = sum(statistics.median(values) for values in times.values())
    print(f"\n### {name}: where the start goes\n")
    print(
        f"{modules} modules loaded; time in module bodies {total_time:.3f} s "
        "(wall clock, sum of medians).\n"
    )
    print("| package | + RSS, MiB | own modules' import time, ms (median) |")
    print("| --- | ---: | ---: |")
    rows = sorted(added.items(), key=lambda item: -item[1])
    shown = 0.0
    for package, extra in rows:
        if abs(extra) < 0.1 * MIB and package not in times:
            continue
        millis = statistics.median(times[package]) * 1000 if package in times else 0.0
        if abs(extra) < 0.25 * MIB and millis < 5:
            continue
        shown += extra
        print(f"| {package} | {extra / MIB:.1f} | {millis:.0f} |")
    rest = sum(added.values()) - shown
    print(f"| (everything else) | {rest / MIB:.1f} | |")
    print(f"| **total** | **{sum(added.values()) / MIB:.1f}** | |")


# ---- the report ------------------------------------------------------------------------


def spread(values: list[float], unit: float, digits: int) -> str:
    scaled = [value / unit for value in values]
    return (
        f"{statistics.median(scaled):.{digits}f} "
        f"({min(scaled):.{digits}f}-{max(scaled):.{digits}f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=1.0)
    parser.add_argument("--imports", type=int, default=0, metavar="N")
    parser.add_argument("--after-request", action="store_true")
    parser.add_argument("--picolm-binary", default=os.environ.get("PICOLM_BINARY", ""))
    parser.add_argument("--picolm-model", default=os.environ.get("PICOLM_MODEL", ""))
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=SRC",
        help="also measure the picolm_server package in SRC (e.g. another commit's src "
        "directory, put first on PYTHONPATH), interleaved with this one",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    engines: dict[str, dict[str, Any]] = {}
    if args.picolm_binary and args.picolm_model:
        engines["picolm"] = {
            "engine": "picolm",
            "picolm": {
                "binary": args.picolm_binary,
                "model_path": args.picolm_model,
                "cache_dir": str(workdir / "states"),
            },
            "logging": {"level": "warning"},
        }
    if not args.skip_llama and importlib.util.find_spec("llama_cpp") is not None:
        engines["llama_cpp"] = {"engine": "llama_cpp", "logging": {"level": "warning"}}
    if not engines:
        parser.error("nothing to measure: give --picolm-binary and --picolm-model")
    versions: dict[str, dict[str, str]] = {"": CHILD_ENV}
    for item in args.compare:
        label, _, src = item.partition("=")
        versions[f" ({label})"] = {**CHILD_ENV, "PYTHONPATH": str(Path(src).resolve())}
    setups = {
        engine + label: (config, env)
        for engine, config in engines.items()
        for label, env in versions.items()
    }
    load_before = os.getloadavg()
    samples: dict[str, list[Sample]] = {name: [] for name in setups}
    for config, env in setups.values():  # warm-up: the bytecode cache, the page cache
        one_start(config, env, workdir, 0.0, after_request=False)
    for run in range(args.runs):
        for name, (config, env) in setups.items():  # interleaved: noise falls on all alike
            sample = one_start(config, env, workdir, args.idle, args.after_request)
            samples[name].append(sample)
            after = (
                f", after a request {sample.rss_after_request / MIB:.1f} MiB"
                if sample.rss_after_request
                else ""
            )
            print(
                f"run {run} {name}: ready {sample.ready:.3f}s (CPU {sample.cpu:.2f}s), "
                f"RSS {sample.rss / MIB:.1f} MiB, peak {sample.peak / MIB:.1f} MiB{after}"
            )
    print()
    print("Medians (min-max) of", args.runs, "starts per engine.\n")
    print(
        "| engine | start to ready, s | CPU to ready, s | idle RSS, MiB | idle RSS, MB "
        "| peak RSS, MiB | RSS after one request, MiB | first request, s | second request, s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in samples.items():
        after_request = [float(row.rss_after_request or 0) for row in rows]
        first = [row.first_request or 0.0 for row in rows]
        second = [row.second_request or 0.0 for row in rows]
        cells = [
            name,
            spread([row.ready for row in rows], 1, 3),
            spread([row.cpu for row in rows], 1, 2),
            spread([row.rss for row in rows], MIB, 1),
            spread([row.rss for row in rows], MB, 1),
            spread([row.peak for row in rows], MIB, 1),
            spread(after_request, MIB, 1) if args.after_request else "-",
            spread(first, 1, 3) if args.after_request else "-",
            spread(second, 1, 3) if args.after_request else "-",
        ]
        print("| " + " | ".join(cells) + " |")
    if args.imports:
        for name, (config, env) in setups.items():
            import_breakdown(name, config, env, workdir, args.imports)
    print(
        f"\n{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load_before} at the start, {os.getloadavg()} at the end"
    )


if __name__ == "__main__":
    main()
