"""Multi-turn time to first token on PicoLM, with prompt-state reuse on and off.

Starts the real server (``python -m picolm_server``) on a PicoLM binary and a LLaMA GGUF
twice, once with ``picolm.prompt_cache: true`` (in a fresh cache directory) and once with
``false``, and sends the same conversation of ``--turns`` user messages, streamed, greedy,
each turn carrying the previous replies. It prints, per turn, the prompt tokens, the
reused (cached) tokens and the time to the first content token for both runs, checks that
the replies are identical, and prints a Markdown table.

    PICOLM_BINARY=/path/to/picolm PICOLM_MODEL=/path/to/model.gguf \\
        .venv/bin/python bench/picolm_prompt_reuse.py --turns 8

A random-weights model of a real shape can be written with ``bench/random_llama_gguf.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.server import run_server

SYSTEM = (
    "You are a helpful assistant for a small hardware shop. Answer briefly, be friendly, "
    "and say so when you do not know something."
)
QUESTIONS = [
    "Hello! Do you sell screws?",
    "What sizes do you have for wood?",
    "And for metal sheets?",
    "How much is a box of one hundred?",
    "Do you also have washers that fit them?",
    "Can I order them online today?",
    "How long does the delivery take?",
    "Do you deliver on Saturday morning?",
    "Great, and can I pay by card?",
    "Thank you, that is all for now.",
]


def converse(server: Any, turns: int, max_tokens: int) -> list[dict[str, Any]]:
    client = server.client(timeout=3600)
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    results = []
    for turn in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
        started = time.monotonic()
        first: float | None = None
        pieces: list[str] = []
        usage = None
        stream = client.chat.completions.create(
            model="bench",
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    if first is None:
                        first = time.monotonic() - started
                    pieces.append(choice.delta.content)
        total = time.monotonic() - started
        reply = "".join(pieces)
        assert usage is not None
        details = usage.prompt_tokens_details
        results.append(
            {
                "turn": turn + 1,
                "prompt_tokens": usage.prompt_tokens,
                "cached_tokens": details.cached_tokens if details else 0,
                "ttft": first if first is not None else total,
                "total": total,
                "reply": reply,
            }
        )
        print(f"  turn {turn + 1}: {results[-1]['prompt_tokens']} prompt tokens, "
              f"{results[-1]['cached_tokens']} reused, TTFT {results[-1]['ttft']:.2f} s",
              flush=True)  # fmt: skip
        messages.append({"role": "assistant", "content": reply})
    return results


def run(binary: str, model: str, turns: int, max_tokens: int, threads: int, reuse: bool) -> Any:
    with tempfile.TemporaryDirectory(prefix="picolm-bench-") as tmp:
        config = {
            "engine": "picolm",
            "server": {"max_concurrent": 1},
            "picolm": {
                "binary": binary,
                "model_path": model,
                "model_id": "bench",
                "threads": threads,
                "timeout_seconds": 3600,
                "prompt_cache": reuse,
                "cache_dir": str(Path(tmp) / "cache"),
            },
            "logging": {"level": "info"},
        }
        with run_server(config, Path(tmp) / "server") as server:
            return converse(server, turns, max_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=os.environ.get("PICOLM_BINARY"))
    parser.add_argument("--model", default=os.environ.get("PICOLM_MODEL"))
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if not args.binary or not args.model:
        parser.error("give --binary and --model (or PICOLM_BINARY and PICOLM_MODEL)")
    print("reuse on:", flush=True)
    on = run(args.binary, args.model, args.turns, args.max_tokens, args.threads, True)
    print("reuse off:", flush=True)
    off = run(args.binary, args.model, args.turns, args.max_tokens, args.threads, False)
    identical = all(a["reply"] == b["reply"] for a, b in zip(on, off, strict=True))
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; "
          f"model {Path(args.model).name}, {args.threads} threads, max_tokens "
          f"{args.max_tokens}, greedy")  # fmt: skip
    print()
    print("| turn | prompt tokens | reused (on) | TTFT reuse on | TTFT reuse off | speed-up |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for a, b in zip(on, off, strict=True):
        print(f"| {a['turn']} | {a['prompt_tokens']} | {a['cached_tokens']} | "
              f"{a['ttft']:.2f} s | {b['ttft']:.2f} s | "
              f"{b['ttft'] / a['ttft']:.1f}x |")  # fmt: skip
    print()
    print(f"replies identical with and without reuse: {identical}")
    if not identical:
        for a, b in zip(on, off, strict=True):
            if a["reply"] != b["reply"]:
                print(f"turn {a['turn']}: {a['reply']!r} != {b['reply']!r}")
        sys.exit(1)


if __name__ == "__main__":
    main()
