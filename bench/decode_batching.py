"""What batching can give on this machine: llama.cpp's own decode speed by batch width.

Not a test: it measures. A server that decodes W conversations together runs one
``llama_decode`` of W rows (one per sequence) per step; this measures that call alone,
with nothing else around it (no sampling, no HTTP, no Python per token beyond filling
the batch), for W in ``--widths``: tokens per second = W / time per step. The ratio of
W=4 to W=1 is the most any server built on this library can gain from 4 concurrent
clients here, whatever its own overhead. The model and the context are set up as the
embedded engine sets them up (``engines/llama_cpp.py``): a KV buffer per sequence,
2,048 positions each, flash attention off, ``--threads`` threads (``--flash-attn`` and
``--kv-unified`` show what the two settings the engine keeps off for exactness would
change).

Each width's sequences first read a 40-token prompt, then ``--steps`` decode steps are
timed; widths are interleaved over ``--rounds`` rounds (noise falls on all alike) and
the median step time per width is reported, with the machine's load average.

    .venv/bin/python bench/decode_batching.py --rounds 5 --steps 64 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any


class Bench:
    def __init__(
        self,
        model_path: Path,
        threads: int,
        max_width: int,
        context: int,
        *,
        flash_attention: bool = False,
        kv_unified: bool = False,
    ) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaModel
        from llama_cpp._logger import set_verbose

        set_verbose(False)
        self.lib = llama_cpp
        self.model = LlamaModel(
            path_model=str(model_path),
            params=llama_cpp.llama_model_default_params(),
            verbose=False,
        )
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = context * max_width
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = max_width
        params.kv_unified = kv_unified
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash_attention
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self.ctx = llama_cpp.llama_init_from_model(self.model.model, params)
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(self.model.vocab))

    def decode(self, rows: list[tuple[int, int, int]]) -> None:
        """Rows of (token, position, sequence), logits for every row (as when sampling)."""
        batch = self.batch
        for index, (token, position, seq) in enumerate(rows):
            batch.token[index] = token
            batch.pos[index] = position
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = seq
            batch.logits[index] = True
        batch.n_tokens = len(rows)
        if self.lib.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def step_seconds(self, width: int, steps: int, prompt_tokens: int = 40) -> float:
        """Median seconds per decode step of ``width`` rows, after each sequence read a
        prompt of ``prompt_tokens``."""
        for seq in range(width):
            self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
            prompt = [(100 + seq * 7 + i) % self.vocab_size for i in range(prompt_tokens)]
            self.decode([(token, i, seq) for i, token in enumerate(prompt)])
        times = []
        for step in range(steps):
            rows = [
                ((500 + 13 * step + seq) % self.vocab_size, prompt_tokens + step, seq)
                for seq in range(width)
            ]
            started = time.perf_counter()
            self.decode(rows)
            times.append(time.perf_counter() - started)
        return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: SmolLM2)")
    parser.add_argument("--widths", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    # The engine keeps both off for exact replies; these show what they would change.
    parser.add_argument("--flash-attn", action="store_true", help="flash attention on")
    parser.add_argument("--kv-unified", action="store_true", help="one KV buffer for all")
    args = parser.parse_args()
    widths = [int(width) for width in args.widths.split(",")]
    if args.model is None:
        from picolm_server.server.bootstrap import embedded_model_path

        model = embedded_model_path()
    else:
        model = args.model
    bench = Bench(
        model,
        args.threads,
        max(widths),
        2048,
        flash_attention=args.flash_attn,
        kv_unified=args.kv_unified,
    )
    load_before = os.getloadavg()
    results: dict[int, list[float]] = {width: [] for width in widths}
    for round_index in range(args.rounds):
        order = widths[round_index % len(widths) :] + widths[: round_index % len(widths)]
        for width in order:
            results[width].append(bench.step_seconds(width, args.steps))
    base: Any = None
    print(
        f"Model {model.name}, {args.threads} threads, flash attention "
        f"{'on' if args.flash_attn else 'off'}, KV buffer "
        f"{'unified' if args.kv_unified else 'per sequence'}, {args.steps} steps, "
        f"{args.rounds} rounds (median of the rounds' median step times).\n"
    )
    print("| rows per step | ms per step | tokens/s | tokens/s vs 1 row |")
    print("| --- | --- | --- | --- |")
    for width in widths:
        seconds = statistics.median(results[width])
        rate = width / seconds
        base = base or rate
        print(f"| {width} | {seconds * 1000:.2f} | {rate:.1f} | {rate / base:.2f}x |")
    print(
        f"\n{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load_before} at the start, {os.getloadavg()} at the end"
    )


if __name__ == "__main__":
    main()
