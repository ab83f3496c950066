"""What keeping llama.cpp prompt states on disk buys: the time to the first token of a
conversation's second turn after its engine was closed and opened again (a model
unloaded and loaded back, or the server restarted).

Embedded SmolLM2-135M-Instruct, one slot, a first turn of about 1,500 tokens. Once: an
engine that is never closed computes the first turn, and an engine with a state
directory computes it and is closed (its state written: the close is timed). Then each
repetition runs, interleaved (the order turning each time):

- ``no swap``: the engine never closed answers the second turn (its slot holds the
  first turn's state);
- ``restored``: a new engine on a copy of the state directory answers it, restoring the
  first turn's state from disk;
- ``restored, no warm-up``: the same without the warm-up decode at load (the code
  before it, for comparison);
- ``recomputed``: a new engine without states answers it (the whole prompt computed).

TTFT is from the request handed to the engine to its first token; opening the engine is
timed apart. It also times reading and checking the saved state, what opening would cost
per state if every state were read at open rather than when a prompt picks it.

    PYTHONPATH=src .venv/bin/python bench/llama_state_restore.py --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from picolm_server.engines.base import GenerationRequest, PromptAccepted, TextDelta
from picolm_server.engines.llama_cpp.engine import LlamaCppEngine, LlamaCppOptions
from picolm_server.engines.llama_cpp.slots import ModelContext
from picolm_server.engines.llama_cpp.state_cache import as_tokens
from picolm_server.gguf import read_gguf_metadata
from picolm_server.models.embedded import EMBEDDED_MODEL_ID
from picolm_server.prompting.chat_template import load_chat_template
from picolm_server.server.bootstrap import embedded_model_path

PARAGRAPH = (
    "The harbour town kept its lighthouse long after ships had radar. Every evening the "
    "keeper climbed {n} steps, wound the clockwork, trimmed the wick and wrote the "
    "weather in a book: wind, swell, the colour of the sky, the boats that came home. "
)


def prompts(template: Any, engine: LlamaCppEngine, target: int) -> tuple[str, list[dict[str, str]]]:
    """A first turn of about ``target`` tokens, and its messages."""
    text, n = "", 0
    while True:
        text += PARAGRAPH.format(n=100 + n)
        n += 1
        messages = [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Read this log.\n\n{text}\nSummarise it."},
        ]
        prompt = str(template.render(messages))
        if len(engine.prompt_tokens(request(prompt, 1))) >= target:
            return prompt, messages


def request(prompt: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_tokens=max_tokens, temperature=0.0, top_p=1.0)


def make_engine(state_dir: Path | None, threads: int, cache_bytes: int = 2**28) -> LlamaCppEngine:
    return LlamaCppEngine(
        LlamaCppOptions(
            model_path=embedded_model_path(),
            model_id=EMBEDDED_MODEL_ID,
            context_length=2048,
            threads=threads,
            slots=1,
            cache_max_bytes=cache_bytes,
            state_dir=state_dir,
        )
    )


def run(engine: LlamaCppEngine, prompt: str, max_tokens: int) -> tuple[str, float, int]:
    """The reply, the seconds to its first token, and the prompt tokens not computed."""

    async def go() -> tuple[str, float, int]:
        text, first, cached = "", 0.0, -1
        started = time.perf_counter()
        async for event in engine.generate(request(prompt, max_tokens)):
            if isinstance(event, PromptAccepted):
                cached = event.cached_tokens
            elif isinstance(event, TextDelta):
                if not text:
                    first = time.perf_counter() - started
                text += event.text
        return text, first, cached

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    metadata = read_gguf_metadata(
        embedded_model_path(), arrays=frozenset({"tokenizer.ggml.tokens"})
    )
    template = load_chat_template("auto", metadata, engine_adds_bos=True)
    # The engine that is never swapped: the first turn computed once, its slot cut back
    # to it before each second turn (no host memory, where the second turn would stay).
    kept = make_engine(None, args.threads, cache_bytes=0)
    first_prompt, messages = prompts(template, kept, args.tokens)
    first_reply, _, _ = run(kept, first_prompt, 48)
    messages += [
        {"role": "assistant", "content": first_reply},
        {"role": "user", "content": "Which details did the keeper write down?"},
    ]
    second_prompt = str(template.render(messages))
    first_tokens = len(kept.prompt_tokens(request(first_prompt, 1)))
    second_tokens = len(kept.prompt_tokens(request(second_prompt, 1)))

    ttft: dict[str, list[float]] = {
        "no swap": [],
        "restored": [],
        "restored, no warm-up": [],
        "recomputed": [],
    }
    opened: dict[str, list[float]] = {name: [] for name in ttft}
    replies: dict[str, set[str]] = {name: set() for name in ttft}
    cached: dict[str, set[int]] = {name: set() for name in ttft}
    warm_up = ModelContext.warm_up
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved"
        writer = make_engine(saved, args.threads)
        run(writer, first_prompt, 1)
        started = time.perf_counter()
        writer.close()
        close_seconds = time.perf_counter() - started
        state_bytes = sum(path.stat().st_size for path in saved.glob("*/*.llstate"))
        for rep in range(args.repeat):
            order = list(ttft)
            order = order[rep % len(order) :] + order[: rep % len(order)]
            for name in order:
                started = time.perf_counter()
                if name == "no swap":
                    engine = kept
                    run(engine, first_prompt, 1)  # the slot back at the first turn
                else:
                    directory = None
                    if name.startswith("restored"):
                        directory = Path(tmp) / f"{rep}-{name}"
                        shutil.copytree(saved, directory)
                    ModelContext.warm_up = (  # type: ignore[method-assign]
                        warm_up if name != "restored, no warm-up" else lambda self: None
                    )
                    engine = make_engine(directory, args.threads)
                    ModelContext.warm_up = warm_up  # type: ignore[method-assign]
                    opened[name].append(time.perf_counter() - started)
                reply, seconds, reused = run(engine, second_prompt, 16)
                if engine is not kept:
                    engine.close()
                ttft[name].append(seconds)
                replies[name].add(reply)
                cached[name].add(reused)
        read_seconds = []
        reader = make_engine(saved, args.threads)
        store = reader.decode_loop.store
        assert store is not None
        for _ in range(args.repeat):
            entry, _ = store.best_match(as_tokens(store.stored_tokens()[0]))
            assert entry is not None
            started = time.perf_counter()
            assert store.read(entry) is not None
            read_seconds.append(time.perf_counter() - started)
        reader.close()
    kept.close()

    median = {name: statistics.median(values) for name, values in ttft.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    print(f"time: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"first turn {first_tokens} tokens, second turn {second_tokens} tokens")
    print(f"state on disk: {state_bytes} bytes ({state_bytes / first_tokens:.0f} per token)")
    for name, values in ttft.items():
        runs = ", ".join(f"{v * 1000:.0f}" for v in values)
        load = (
            f", open median {statistics.median(opened[name]) * 1000:.0f} ms" if opened[name] else ""
        )
        print(
            f"{name}: TTFT median {median[name] * 1000:.0f} ms ({runs}); "
            f"cached {cached[name]}{load}"
        )
    for name in ("restored", "restored, no warm-up", "recomputed"):
        print(f"{name} / no swap: {median[name] / median['no swap']:.2f}")
    print(f"restored / recomputed: {median['restored'] / median['recomputed']:.2f}")
    print(f"close writing the state: {close_seconds * 1000:.0f} ms")
    print(f"reading and checking the state: median {statistics.median(read_seconds) * 1000:.1f} ms")
    same = len(set().union(*replies.values())) == 1
    print(f"second-turn replies identical in every run and variant: {same}")


if __name__ == "__main__":
    main()
