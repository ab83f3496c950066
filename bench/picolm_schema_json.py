"""Latency of a schema-exact tool call on PicoLM against a plain ``--json`` run.

Both modes get the same model, the same prompt (what the server renders for a named
call of a three-argument function) and the same token budget, through the PicoLM engine
itself (no HTTP): "plain" is one PicoLM run with ``--json`` (balanced JSON, no schema),
"schema" is the server writing the fixed parts and running PicoLM for the free ones.
Modes alternate call by call, so machine noise falls on both alike. For each it prints
the median wall time per call, PicoLM runs per call, and how many replies validated
against the schema, with saved prompt states off (every call computes the whole
prompt) and on (a fresh state store per mode; the first call is cold, the median is
over the warm ones).

    PICOLM_BINARY=/path/to/picolm .venv/bin/python bench/picolm_schema_json.py \\
        --model /tmp/random-4l.gguf --calls 5

Without ``--model`` a random-weights model of TinyLlama's width with ``--layers`` layers
is written to a temporary directory (see ``bench/random_llama_gguf.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import jsonschema

from picolm_server.api.chat.convert import output_request, template_messages
from picolm_server.api.chat.types import ChatCompletionRequest
from picolm_server.engines.base import (
    GenerationEvent,
    GenerationRequest,
    OutputConstraint,
    TextDelta,
)
from picolm_server.engines.picolm.engine import PicoLMEngine, PicoLMOptions
from picolm_server.engines.picolm.prompt_store import PromptCache
from picolm_server.engines.picolm.tokenizer import PicoLMTokenizer
from picolm_server.gguf import read_gguf_metadata
from picolm_server.prompting.chat_template import load_chat_template
from picolm_server.server.bootstrap import kv_shape
from picolm_server.tool_calls import make_plan, prompt_messages
from picolm_server.tool_calls.reply_schema import reply_schema

PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city", "unit", "days"],
}


def render_prompt(model: Path) -> tuple[str, dict[str, Any]]:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "What will the weather be in Oslo?"}],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_forecast",
                        "description": "Get the weather forecast for a city",
                        "parameters": PARAMETERS,
                    },
                }
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_forecast"}},
        }
    )
    plan = make_plan(
        output_request(request), hermes_template=False, grammar_engine=False, max_tokens=64
    )
    assert plan is not None
    messages, _ = prompt_messages(
        template_messages(request.messages), plan, template_renders_tools=False, call_format="json"
    )
    metadata = read_gguf_metadata(model, arrays=frozenset({"tokenizer.ggml.tokens"}))
    template = load_chat_template("zephyr", metadata, engine_adds_bos=True)
    schema = reply_schema(plan)
    assert schema is not None
    return template.render(messages), schema


def make_engine(binary: Path, model: Path, threads: int, cache_dir: Path | None) -> PicoLMEngine:
    metadata = read_gguf_metadata(model, arrays=frozenset({"tokenizer.ggml.tokens"}))
    tokenizer = PicoLMTokenizer.from_gguf(model)
    cache = None
    if cache_dir is not None:
        shape = kv_shape(metadata)
        assert shape is not None
        cache = PromptCache(cache_dir, max_bytes=1 << 32, model_identity=str(model), shape=shape)
    options = PicoLMOptions(binary, model, "m", threads=threads, context_length=2048)
    return PicoLMEngine(options, metadata, tokenizer=tokenizer, prompt_cache=cache)


async def one_call(
    engine: PicoLMEngine, prompt: str, constraint: OutputConstraint, max_tokens: int
) -> tuple[float, int, str]:
    """Wall time, PicoLM runs and reply text of one call."""
    runs = 0
    plain = engine._generate_text

    async def counting(request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        nonlocal runs
        runs += 1
        async for event in plain(request):
            yield event

    engine._generate_text = counting  # type: ignore[method-assign]
    request = GenerationRequest(prompt, max_tokens, 0.0, 1.0, seed=1, constraint=constraint)
    started = time.perf_counter()
    text = "".join([e.text async for e in engine.generate(request) if isinstance(e, TextDelta)])
    elapsed = time.perf_counter() - started
    engine._generate_text = plain  # type: ignore[method-assign]
    return elapsed, runs, text


def valid(text: str, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=os.environ.get("PICOLM_BINARY", ""))
    parser.add_argument("--model", type=Path)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", choices=["both", "on", "off"], default="both")
    args = parser.parse_args()
    if not args.binary:
        parser.error("--binary or PICOLM_BINARY is required")
    binary = Path(args.binary)
    workdir = Path(tempfile.mkdtemp(prefix="schema-json-bench-"))
    model = args.model
    if model is None:
        from bench.random_llama_gguf import build

        model = build(workdir / f"random-{args.layers}l.gguf", layers=args.layers)
    prompt, schema = render_prompt(model)
    tokens = len(PicoLMTokenizer.from_gguf(model).encode(prompt))
    print(f"model {model}, prompt {tokens} tokens, max_tokens {args.max_tokens}")
    modes = {"plain --json": OutputConstraint(), "schema": OutputConstraint(json_schema=schema)}
    results: dict[tuple[str, bool], list[tuple[float, int, str]]] = {}
    for reuse in {"both": (False, True), "on": (True,), "off": (False,)}[args.reuse]:
        engines = {
            name: make_engine(
                binary, model, args.threads, workdir / f"cache-{index}" if reuse else None
            )
            for index, name in enumerate(modes)
        }
        for call in range(args.calls):
            for name, constraint in modes.items():
                outcome = asyncio.run(one_call(engines[name], prompt, constraint, args.max_tokens))
                results.setdefault((name, reuse), []).append(outcome)
                print(f"reuse={reuse} call {call} {name}: {outcome[0]:.2f}s, {outcome[1]} runs, "
                      f"{outcome[2]!r}")  # fmt: skip
    print()
    print("| saved states | mode | median s/call | first call s | runs/call | valid replies |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (name, reuse), outcomes in results.items():
        times = [t for t, _, _ in outcomes]
        measured = times[1:] if reuse and len(times) > 1 else times
        runs = statistics.median(r for _, r, _ in outcomes)
        ok = sum(valid(text, schema) for _, _, text in outcomes)
        print(f"| {'on' if reuse else 'off'} | {name} | {statistics.median(measured):.2f} | "
              f"{times[0]:.2f} | {runs:g} | {ok}/{len(outcomes)} |")  # fmt: skip
    print(f"\n{platform.platform()}, {os.cpu_count()} CPUs, load {os.getloadavg()}")


if __name__ == "__main__":
    main()
