"""Start-to-ready time and idle memory of the server, for each engine.

Starts the real server (``python -m picolm_server -config FILE``) ``--runs`` times per
engine on a free port and measures, for each start: the time from starting the process
to the first ``200`` from ``GET /health`` (polled every 5 ms) and the CPU time the server
used until then (which a busy machine inflates less than the wall time), and, after ``--idle``
seconds of idling, the server's resident memory (VmRSS) and its peak (VmHWM) from
``/proc``. It prints the median and the range, as a Markdown table.

    .venv/bin/python bench/startup_memory.py --runs 5 \\
        --picolm-binary /path/to/picolm --picolm-model /path/to/model.gguf

The llama.cpp engine is measured on its embedded model when the ``llama`` extra is
installed (``--skip-llama`` to leave it out). PicoLM runs no process until a request
comes, so the PicoLM figures are the server alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.server import free_port


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


Sample = tuple[float, float, int, int]


def one_start(config: dict[str, Any], workdir: Path, idle: float) -> Sample:
    port = free_port()
    config = {**config, "server": {"host": "127.0.0.1", "port": port}}
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = (workdir / "server.log").open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "picolm_server", "-config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
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
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
    return ready, cpu, memory["VmRSS"], memory["VmHWM"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=1.0)
    parser.add_argument("--picolm-binary", default=os.environ.get("PICOLM_BINARY", ""))
    parser.add_argument("--picolm-model", default=os.environ.get("PICOLM_MODEL", ""))
    parser.add_argument("--skip-llama", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    engines: dict[str, dict[str, Any]] = {}
    if args.picolm_binary and args.picolm_model:
        engines["picolm"] = {
            "engine": "picolm",
            "picolm": {"binary": args.picolm_binary, "model_path": args.picolm_model},
            "logging": {"level": "warning"},
        }
    if not args.skip_llama and importlib.util.find_spec("llama_cpp") is not None:
        engines["llama_cpp"] = {"engine": "llama_cpp", "logging": {"level": "warning"}}
    if not engines:
        parser.error("nothing to measure: give --picolm-binary and --picolm-model")
    samples: dict[str, list[Sample]] = {name: [] for name in engines}
    for run in range(args.runs):
        for name, config in engines.items():  # interleaved: noise falls on both alike
            sample = one_start(config, workdir, args.idle)
            samples[name].append(sample)
            print(f"run {run} {name}: ready {sample[0]:.3f}s (CPU {sample[1]:.2f}s), "
                  f"RSS {sample[2] / 1024:.1f} MiB, peak {sample[3] / 1024:.1f} MiB")  # fmt: skip
    print()
    print("| engine | start to ready, s (median, min-max) | CPU to ready, s (median) "
          "| idle RSS, MiB (median, min-max) | peak RSS, MiB (median) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for name, rows in samples.items():
        ready = [row[0] for row in rows]
        cpu = [row[1] for row in rows]
        rss = [row[2] / 1024 for row in rows]
        peak = [row[3] / 1024 for row in rows]
        print(f"| {name} | {statistics.median(ready):.3f} ({min(ready):.3f}-{max(ready):.3f}) | "
              f"{statistics.median(cpu):.2f} | "
              f"{statistics.median(rss):.1f} ({min(rss):.1f}-{max(rss):.1f}) | "
              f"{statistics.median(peak):.1f} |")  # fmt: skip
    print(f"\n{platform.platform()}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()}")  # fmt: skip


if __name__ == "__main__":
    main()
