"""Jump-forward on and off, in one process: the bench's ``grammar`` requests (the person
``json_schema`` reply and the forced ``book_table`` call, bench/real_use.py) through the
openai SDK over the in-process server, on two llama.cpp engines of the embedded SmolLM2,
one with ``jump_forward`` and one without, interleaved round by round (on, off, off, on,
...) so that machine noise falls on both alike. Greedy, so both write valid replies of
about the same length. Every round sends the same requests, as an application with a
fixed system prompt and tools does: after the first (warm-up) round the prompt's state
is reused, so what is timed is mostly the reply.

    .venv/bin/python bench/jump_forward_timing.py [--rounds 5] [--threads 2]

Prints per request kind the median seconds on and off, their ratio, and the tokens the
engine wrote (grammar-fixed) among the completion tokens (from ``Finished``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.real_use import BOOKING_TOOL, PERSON_SCHEMA, STORY_SYSTEM
from tests.support.inprocess import InProcessServer, serve_in_process

from picolm_server.engines.base import Finished


def engine(jump_forward: bool, threads: int) -> Any:
    from picolm_server.engines.llama_cpp.engine import LlamaCppEngine, LlamaCppOptions
    from picolm_server.models.embedded import EMBEDDED_MODEL_ID
    from picolm_server.server.bootstrap import embedded_model_path

    return LlamaCppEngine(
        LlamaCppOptions(
            model_path=embedded_model_path(),
            model_id=EMBEDDED_MODEL_ID,
            context_length=2048,
            threads=threads,
            slots=1,
            jump_forward=jump_forward,
        )
    )


def requests() -> dict[str, dict[str, Any]]:
    system = {"role": "system", "content": STORY_SYSTEM}
    return {
        "person": {
            "messages": [
                system,
                {
                    "role": "user",
                    "content": "Invent a person who lives in a city by the sea. "
                    "Reply with their name, age and city as JSON.",
                },
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "person", "strict": True, "schema": PERSON_SCHEMA},
            },
        },
        "book_table": {
            "messages": [
                system,
                {
                    "role": "user",
                    "content": "Please book a table for four people at Luigi's Trattoria "
                    "tonight at half past seven.",
                },
            ],
            "tools": [BOOKING_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "book_table"}},
        },
    }


def record_finished(server: InProcessServer, into: list[Finished]) -> None:
    """Keep every Finished the engine hands out (the wire does not carry written_tokens)."""
    real = server.engine.generate

    async def generate(request: Any) -> Any:
        async for event in real(request):
            if isinstance(event, Finished):
                into.append(event)
            yield event

    server.engine.generate = generate  # type: ignore[method-assign]


async def main_async(args: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        servers: dict[bool, InProcessServer] = {}
        finished: dict[bool, list[Finished]] = {True: [], False: []}
        for on in (True, False):
            servers[on] = await stack.enter_async_context(
                serve_in_process(engine(on, args.threads), server={"max_concurrent": 1})
            )
            record_finished(servers[on], finished[on])
        seconds: dict[tuple[str, bool], list[float]] = {}
        written: dict[tuple[str, bool], list[tuple[int, int]]] = {}
        for run in range(args.rounds + 1):  # the first round warms up and is not counted
            order = (True, False) if run % 2 == 0 else (False, True)
            for kind, body in requests().items():
                for on in order:
                    client = servers[on].client()
                    began = time.perf_counter()
                    await client.chat.completions.create(
                        model=servers[on].engine.model.id,
                        temperature=0,
                        max_tokens=96,
                        **body,
                    )
                    elapsed = time.perf_counter() - began
                    last = finished[on][-1]
                    if run:
                        seconds.setdefault((kind, on), []).append(elapsed)
                        written.setdefault((kind, on), []).append(
                            (last.written_tokens, last.completion_tokens)
                        )
    print(f"{args.rounds} rounds, threads {args.threads}; median seconds per request")
    for kind in ("person", "book_table"):
        on, off = (statistics.median(seconds[(kind, flag)]) for flag in (True, False))
        w = sum(x for x, _ in written[(kind, True)])
        total = sum(y for _, y in written[(kind, True)])
        off_total = sum(y for _, y in written[(kind, False)])
        print(
            f"{kind:10s} on {on:.3f} s  off {off:.3f} s  off/on {off / on:.2f}x  "
            f"written {w}/{total} completion tokens ({100 * w / total:.0f}%); "
            f"off: {off_total} completion tokens"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
