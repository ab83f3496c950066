"""Whether unloading a llama.cpp model gives its memory back: resident memory across
load/unload cycles of the embedded SmolLM2.

Each cycle builds the engine exactly as the server does (``server/bootstrap.py``'s
``load_model``, the shelf's loader, with the default settings: the embedded model, its
embedder, every core, four slots), runs one short greedy generation (and, unless left out with
``--only-generate``, one embedding and one generation held to a JSON schema, so that
the embedder's context and the grammar cache are loaded too), then closes the engine,
which is what unloading a model from the shelf does. After cycles 1, 10, 50 and 100 (or
``--cycles``' own marks) it reads the process's resident memory: ``VmRSS`` from
``/proc/self/status`` and ``Rss`` (with its anonymous and file-backed parts) from
``/proc/self/smaps_rollup``. It prints them as a Markdown table with the drift from
cycle 1: the goal is within 10 MB after 100 cycles. No garbage collection is forced:
the figures are what a server that keeps unloading would hold.

The process is set up as ``picolm-server`` sets up its own (``cli.main``: blocks of 1
MiB and more mapped on their own, ``server/footprint.py``). ``--without-close-trim``
leaves out the engine's ``malloc_trim`` after it frees the model (what ``close`` did
before it handed its memory back), for the comparison: run both, side by side.

Every cycle's greedy reply must equal the first cycle's (checked, not timed).

    .venv/bin/python bench/model_unload_leak.py --cycles 100
    .venv/bin/python bench/model_unload_leak.py --cycles 100 --without-close-trim
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from picolm_server.config.settings import Settings
from picolm_server.engines.base import (
    Engine,
    GenerationRequest,
    OutputConstraint,
    TextDelta,
)
from picolm_server.engines.llama_cpp import engine as llama_engine
from picolm_server.engines.llama_cpp.engine import LlamaCppEngine
from picolm_server.server.bootstrap import load_model
from picolm_server.server.footprint import map_large_allocations
from picolm_server.shelf.catalog import build_catalog

MB = 1000 * 1000
MIB = 1024 * 1024
GOAL_MB = 10.0
PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"
REPLY_TOKENS = 16
SCHEMA = {
    "type": "object",
    "properties": {"colour": {"type": "string"}},
    "required": ["colour"],
}


@dataclass(frozen=True)
class Memory:
    """Resident memory in bytes: VmRSS, and smaps_rollup's Rss with its parts."""

    vm_rss: int
    rss: int
    anonymous: int
    file: int


def _kib_fields(path: str) -> dict[str, int]:
    fields: dict[str, int] = {}
    with open(path, encoding="ascii") as file:
        for line in file:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[name] = int(parts[0]) * 1024
    return fields


def memory_now() -> Memory:
    status = _kib_fields("/proc/self/status")
    rollup = _kib_fields("/proc/self/smaps_rollup")
    return Memory(
        vm_rss=status["VmRSS"],
        rss=rollup["Rss"],
        anonymous=rollup["Anonymous"],
        file=rollup["Rss"] - rollup["Anonymous"],
    )


async def generate(engine: Engine, constraint: OutputConstraint | None = None) -> str:
    request = GenerationRequest(
        prompt=PROMPT,
        max_tokens=REPLY_TOKENS,
        temperature=0.0,
        top_p=1.0,
        constraint=constraint,
    )
    text = []
    # To its end, as the server reads it: the generation lets go of its slot there.
    async with contextlib.aclosing(engine.generate(request)) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                text.append(event.text)
    return "".join(text)


async def cycle(settings: Settings, everything: bool) -> str:
    """Load, use and unload the model once; its greedy reply."""
    built = load_model(settings, build_catalog(settings).default)
    engine = built.engine
    assert isinstance(engine, LlamaCppEngine)
    try:
        reply = await generate(engine)
        if everything:
            await engine.embed(["a short sentence to embed"])
            await generate(engine, OutputConstraint(json_schema=SCHEMA))
    finally:
        engine.close()
    return reply


def mb(value: int) -> str:
    return f"{value / MB:.1f}"


async def run(cycles: int, marks: list[int], everything: bool) -> None:
    settings = Settings()
    before = memory_now()
    measured: dict[int, Memory] = {}
    first_reply = ""
    started = time.monotonic()
    for number in range(1, cycles + 1):
        reply = await cycle(settings, everything)
        if number == 1:
            first_reply = reply
        elif reply != first_reply:
            raise SystemExit(f"cycle {number}: the greedy reply changed: {reply!r}")
        now = memory_now()
        if number in marks:
            measured[number] = now
        # Every cycle on stderr: where memory grows, if it does.
        print(
            f"cycle {number}: VmRSS {mb(now.vm_rss)} MB, anonymous {mb(now.anonymous)} MB "
            f"({time.monotonic() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    elapsed = time.monotonic() - started
    print(
        f"{cycles} load/unload cycles of the embedded SmolLM2 on llama.cpp "
        f"({'generation, embedding, JSON-schema generation' if everything else 'generation'}"
        f" per cycle), {elapsed:.0f} s; Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores; greedy reply {first_reply!r}"
    )
    print()
    print("| after | VmRSS MB | Rss MB | anonymous MB | file MB | VmRSS drift MB | Rss drift MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| before cycle 1 | {mb(before.vm_rss)} | {mb(before.rss)} | "
        f"{mb(before.anonymous)} | {mb(before.file)} | | |"
    )
    base = measured[marks[0]]
    for number in marks:
        now = measured[number]
        print(
            f"| cycle {number} | {mb(now.vm_rss)} | {mb(now.rss)} | {mb(now.anonymous)} | "
            f"{mb(now.file)} | {(now.vm_rss - base.vm_rss) / MB:+.1f} | "
            f"{(now.rss - base.rss) / MB:+.1f} |"
        )
    drift = (measured[marks[-1]].vm_rss - base.vm_rss) / MB
    verdict = "within" if abs(drift) <= GOAL_MB else "NOT within"
    print()
    print(
        f"Drift after cycle {marks[0]}: {drift:+.1f} MB VmRSS "
        f"({drift * MB / MIB:+.1f} MiB), {verdict} the {GOAL_MB:.0f} MB goal."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument(
        "--only-generate",
        action="store_true",
        help="no embedding and no JSON-schema generation in each cycle",
    )
    parser.add_argument(
        "--without-close-trim",
        action="store_true",
        help="the engine's close() without its malloc_trim (the old code), for comparison",
    )
    args = parser.parse_args()
    if args.cycles < 1:
        parser.error("--cycles must be at least 1")
    map_large_allocations()
    if args.without_close_trim:
        llama_engine.trim = lambda: None  # type: ignore[attr-defined]
    print(
        "engine close(): " + ("without malloc_trim (old)" if args.without_close_trim else "as is")
    )
    marks = sorted({mark for mark in (1, 10, 50, 100, args.cycles) if mark <= args.cycles})
    asyncio.run(run(args.cycles, marks, not args.only_generate))


if __name__ == "__main__":
    main()
