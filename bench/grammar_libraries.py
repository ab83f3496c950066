"""Grammar libraries for jump-forward, side by side with today's llama.cpp grammar: on
SmolLM2's vocabulary and the server's own grammars (the GBNF ``tool_calls/grammar.py``
builds for the bench's person schema, the ``book_table`` tool and the tools of
``bench/tool_calls_eval.py``), per library:

- whether it takes the grammar (our GBNF) and the bare JSON schema, and compile time;
- per reply token: the check of one token, the vocabulary's mask, and accepting it;
- the share of a reply the grammar fixes: bytes (``compute_ff_bytes`` /
  ``find_jump_forward_string``) and, for llguidance, tokens as the engine writes them
  (``engines/llama_cpp/guidance.py``, tokenizer boundary included).

The replies are fixed, schema-valid texts in the grammar's call format, tokenized by
SmolLM2; every library replays the same tokens.

    .venv/bin/python bench/grammar_libraries.py --export /tmp/grammar_cases.json
    /tmp/xg/bin/python bench/grammar_libraries.py --xgrammar /tmp/grammar_cases.json

The first run measures llama.cpp and llguidance (the llama extra) and writes the cases
with the vocabulary; the second measures xgrammar in a venv of its own (it needs torch:
``pip install torch xgrammar``), without picolm_server or llama.cpp. Bench-only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
BOOK_TABLE = {
    "type": "object",
    "properties": {
        "restaurant": {"type": "string", "description": "name of the restaurant"},
        "people": {"type": "integer", "description": "number of guests"},
        "time": {"type": "string", "description": "time of the booking, e.g. 19:30"},
    },
    "required": ["restaurant", "people", "time"],
}

# name -> (tools and choice or response schema, a reply the grammar holds)
CALL = "<tool_call>\n{}\n</tool_call>"


def call(name: str, arguments: str) -> str:
    return CALL.format('{"name": "' + name + '", "arguments": ' + arguments + "}")


def cases() -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    from bench.tool_calls_eval import TOOLS

    def params(key: str) -> dict[str, Any]:
        parameters: dict[str, Any] = TOOLS[key]["function"]["parameters"]
        return parameters

    def named(key: str, reply: str) -> dict[str, Any]:
        name = TOOLS[key]["function"]["name"]
        return {
            "name": f"tool {name}",
            "tools": [(name, params(key))],
            "choice": name,
            "reply": call(name, reply),
            "schema": params(key),
        }

    return [
        {
            "name": "json_schema person",
            "response": PERSON,
            "reply": '{"name": "Marina Costa", "age": 34, "city": "Lisbon"}',
            "schema": PERSON,
        },
        {
            "name": "tool book_table",
            "tools": [("book_table", BOOK_TABLE)],
            "choice": "book_table",
            "reply": call(
                "book_table",
                '{"restaurant": "Luigi\'s Trattoria", "people": 4, "time": "19:30"}',
            ),
            "schema": BOOK_TABLE,
        },
        named("weather", '{"city": "Paris", "unit": "celsius"}'),
        named(
            "email",
            '{"to": "alice@example.com", "subject": "Meeting", "body": "The meeting '
            'moved to Friday.", "cc": ["bob@example.com"]}',
        ),
        named("search", '{"query": "Mars rover news", "max_results": 5, "safe": true}'),
        named(
            "calendar",
            '{"title": "Dentist", "date": "2025-03-14", "duration_minutes": 30, '
            '"attendees": [{"name": "Ana"}], "priority": null}',
        ),
        named("calc", '{"expression": "17 * 23"}'),
        named("time", "{}"),
        {
            "name": "required weather|email",
            "tools": [
                ("get_weather", params("weather")),
                ("send_email", params("email")),
            ],
            "choice": "required",
            "reply": call("get_weather", '{"city": "Tokyo", "unit": "celsius"}'),
            "schema": params("weather"),
        },
    ]


def gbnf_of(case: dict[str, Any]) -> str:
    from picolm_server.tool_calls import (
        FunctionTool,
        JSONOutput,
        NamedTool,
        OutputRequest,
        build_grammar,
        make_plan,
    )

    if "response" in case:
        request = OutputRequest(json_output=JSONOutput(case["response"]))
    else:
        tools = tuple(
            FunctionTool(name, None, parameters, "tools", "tools")
            for name, parameters in case["tools"]
        )
        choice: Any = case["choice"]
        if choice not in ("auto", "required", "none"):
            choice = NamedTool(choice)
        request = OutputRequest(tools=tools, tool_choice=choice, parallel_tool_calls=False)
    plan = make_plan(request, hermes_template=True, grammar_engine=True, max_tokens=256)
    assert plan is not None
    return build_grammar(plan).gbnf


def micro(values: list[float], spread: bool = False) -> str:
    """Microseconds: the median (and the largest, with ``spread``)."""
    if not values:
        return "-"
    median = f"{statistics.median(values) * 1e6:.1f}"
    return f"{median} ({max(values) * 1e6:.0f})" if spread else median


def ms(value: float | None) -> str:
    return "refused" if value is None else f"{value * 1e3:.1f}"


# ---- llama.cpp and llguidance (the llama extra) ----


def measure_llama(
    case: dict[str, Any], vocab: Any, n_vocab: int, tokens: list[int]
) -> dict[str, Any]:
    """Today's path: llama.cpp's GBNF grammar sampler."""
    import llama_cpp
    import numpy as np

    from picolm_server.engines.llama_cpp.sampling import _TOKEN_DATA

    began = time.perf_counter()
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, case["gbnf"].encode(), b"root")
    compiled = time.perf_counter() - began
    if not sampler:
        return {"compile": None}
    single = llama_cpp.llama_token_data(0, 1.0, 0.0)
    one = llama_cpp.llama_token_data_array(ctypes.pointer(single), 1, -1, False)
    candidates = np.empty(n_vocab, dtype=_TOKEN_DATA)
    checks, masks, accepts = [], [], []
    for token in tokens:
        single.id, single.logit = token, 1.0
        one.size, one.selected = 1, -1
        t0 = time.perf_counter()
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(one))
        t1 = time.perf_counter()
        assert not math.isinf(single.logit), case["name"]
        candidates["id"] = np.arange(n_vocab, dtype=np.int32)
        candidates["logit"] = 0.0
        array = llama_cpp.llama_token_data_array(
            candidates.ctypes.data_as(llama_cpp.llama_token_data_p), n_vocab, -1, False
        )
        t2 = time.perf_counter()
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        t3 = time.perf_counter()
        llama_cpp.llama_sampler_accept(sampler, token)
        t4 = time.perf_counter()
        checks.append(t1 - t0)
        masks.append(t3 - t2)
        accepts.append(t4 - t3)
    llama_cpp.llama_sampler_free(sampler)
    return {"compile": compiled, "check": checks, "mask": masks, "accept": accepts}


def measure_llguidance(
    case: dict[str, Any], tokenizer: Any, n_vocab: int, tokens: list[int]
) -> dict[str, Any]:
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import gbnf_to_lark

    from picolm_server.engines.llama_cpp.guidance import GuidedGrammar

    out: dict[str, Any] = {}
    began = time.perf_counter()
    schema_matcher = LLMatcher(
        tokenizer, LLMatcher.grammar_from_json_schema(case["schema"]), log_level=0
    )
    out["schema_compile"] = None if schema_matcher.is_error() else time.perf_counter() - began
    began = time.perf_counter()
    try:
        matcher = LLMatcher(
            tokenizer, LLMatcher.grammar_from_lark(gbnf_to_lark(case["gbnf"])), log_level=0
        )
    except Exception as exc:
        out["compile"], out["error"] = None, str(exc)[:200]
        return out
    if matcher.is_error():
        out["compile"], out["error"] = None, matcher.get_error()[:200]
        return out
    out["compile"] = time.perf_counter() - began
    guided = GuidedGrammar(matcher.deep_copy(), tokenizer, n_vocab)
    checks, masks, accepts = [], [], []
    for token in tokens:
        t0 = time.perf_counter()
        ok = guided.accepts(token)
        t1 = time.perf_counter()
        allowed = guided.allowed()
        t2 = time.perf_counter()
        guided.accept(token)
        t3 = time.perf_counter()
        assert ok and allowed[token], case["name"]
        checks.append(t1 - t0)
        masks.append(t2 - t1)
        accepts.append(t3 - t2)
    out.update(check=checks, mask=masks, accept=accepts)
    # Jump-forward over the reply: the model's token is the first of the rest's own
    # tokenization; then the engine writes what GuidedGrammar.forced_tokens gives.
    guided = GuidedGrammar(matcher.deep_copy(), tokenizer, n_vocab)
    rest = case["reply"].encode()
    generated = written = 0
    while rest:
        token = tokenizer.tokenize_bytes(rest)[0]
        assert guided.accepts(token), case["name"]
        guided.accept(token)
        generated += 1
        rest = rest[len(tokenizer.decode_bytes([token])) :]
        forced = guided.forced_tokens(token, 10_000)
        text = tokenizer.decode_bytes(forced)
        assert rest.startswith(text), case["name"]
        rest = rest[len(text) :]
        written += len(forced)
    out.update(generated=generated, written=written)
    # Reply tokens (its own tokenization) that lie wholly in text the grammar fixes.
    walker = matcher.deep_copy()
    forced_tokens = 0
    for token in tokens:
        fixed = walker.compute_ff_bytes() if not walker.is_stopped() else b""
        forced_tokens += fixed.startswith(tokenizer.decode_bytes([token]))
        walker.consume_token(token)
    out["forced_tokens"] = forced_tokens
    return out


def run_native(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import llama_cpp
    from llguidance.llamacpp import lltokenizer_from_vocab

    from picolm_server.server.bootstrap import embedded_model_path

    llama = llama_cpp.Llama(model_path=str(embedded_model_path()), vocab_only=True, verbose=False)
    vocab = llama._model.vocab
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
    began = time.perf_counter()
    tokenizer = lltokenizer_from_vocab(vocab)
    tokenizer_seconds = time.perf_counter() - began
    rows = []
    export = []
    for case in cases():
        case["gbnf"] = gbnf_of(case)
        tokens = llama.tokenize(case["reply"].encode(), add_bos=False, special=False)
        llama_figures = measure_llama(case, vocab, n_vocab, tokens)
        guidance = measure_llguidance(case, tokenizer, n_vocab, tokens)
        rows.append((case, tokens, llama_figures, guidance))
        export.append(
            {k: case[k] for k in ("name", "gbnf", "schema", "reply")}
            | {"tokens": tokens, "pieces": [llama.detokenize([t]).hex() for t in tokens]}
        )
    print(f"llguidance tokenizer from the llama.cpp vocabulary: {tokenizer_seconds:.2f} s")
    print(
        "times: compile ms; check, mask (largest), accept µs per token (median); "
        "written: tokens the engine writes / reply tokens"
    )
    print(
        f"{'case':26s} {'tok':>4s} | {'llama.cpp compile/check/mask/accept':>42s} | "
        f"{'llguidance gbnf/schema compile, check/mask/accept':>56s} | fixed | written"
    )
    total_written = total_tokens = 0
    for case, tokens, lf, gf in rows:
        lcell = (
            f"{ms(lf['compile'])} / {micro(lf.get('check', []))} / "
            f"{micro(lf.get('mask', []), True)} / {micro(lf.get('accept', []))}"
        )
        gcell = (
            f"{ms(gf['compile'])} / {ms(gf['schema_compile'])}, {micro(gf.get('check', []))} / "
            f"{micro(gf.get('mask', []), True)} / {micro(gf.get('accept', []))}"
        )
        share = ""
        if "written" in gf:
            n = gf["written"] + gf["generated"]
            share = f"{gf['written']}/{n} ({100 * gf['written'] / n:.0f}%)"
            total_written += gf["written"]
            total_tokens += n
        fixed = gf.get("forced_tokens", "-")
        print(
            f"{case['name']:26s} {len(tokens):4d} | {lcell:>42s} | {gcell:>56s} | "
            f"{fixed:>5} | {share}"
        )
        if "error" in gf:
            print(f"    llguidance refused: {gf['error']}")
    if total_tokens:
        print(
            f"all: {total_written}/{total_tokens} reply tokens written by the grammar "
            f"({100 * total_written / total_tokens:.0f}%)"
        )
    if args.export:
        vocabulary = [
            llama_cpp.llama_token_get_text(vocab, t).decode("utf-8", "replace")
            for t in range(n_vocab)
        ]
        Path(args.export).write_text(
            json.dumps({"cases": export, "vocabulary": vocabulary, "eos": llama.token_eos()})
        )
        print(f"cases written to {args.export}")


# ---- xgrammar (a venv of its own) ----


def run_xgrammar(path: str) -> None:
    import numpy as np
    import torch
    import xgrammar as xg

    data = json.loads(Path(path).read_text())
    began = time.perf_counter()
    info = xg.TokenizerInfo(
        data["vocabulary"], xg.VocabType.BYTE_LEVEL, stop_token_ids=[data["eos"]]
    )
    compiler = xg.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    print(f"xgrammar tokenizer info: {time.perf_counter() - began:.2f} s")
    print(f"{'case':26s} {'tok':>4s} | {'xgrammar gbnf/schema compile, mask/accept':>50s} | fixed")
    bitmask = xg.allocate_token_bitmask(1, info.vocab_size)
    for case in data["cases"]:
        compiled = None
        began = time.perf_counter()
        try:
            compiled = compiler.compile_grammar(
                xg.Grammar.from_ebnf(case["gbnf"], root_rule_name="root")
            )
            gbnf_seconds: float | None = time.perf_counter() - began
        except Exception as exc:
            gbnf_seconds, error = None, str(exc)[:160]
        began = time.perf_counter()
        try:
            compiler.compile_json_schema(json.dumps(case["schema"]))
            schema_seconds: float | None = time.perf_counter() - began
        except Exception:
            schema_seconds = None
        masks, accepts = [], []
        forced = 0
        if compiled is not None:
            matcher = xg.GrammarMatcher(compiled)
            for token, piece in zip(case["tokens"], case["pieces"], strict=True):
                fixed = matcher.find_jump_forward_string().encode()
                forced += fixed.startswith(bytes.fromhex(piece))
                t0 = time.perf_counter()
                matcher.fill_next_token_bitmask(bitmask)
                t1 = time.perf_counter()
                ok = matcher.accept_token(token)
                t2 = time.perf_counter()
                assert ok, case["name"]
                masks.append(t1 - t0)
                accepts.append(t2 - t1)
        cell = f"{ms(gbnf_seconds)} / {ms(schema_seconds)}, {micro(masks, True)} / {micro(accepts)}"
        print(f"{case['name']:26s} {len(case['tokens']):4d} | {cell:>50s} | {forced}")
        if gbnf_seconds is None:
            print(f"    xgrammar refused the GBNF: {error}")
    del np, torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="write the cases and vocabulary here (for --xgrammar)")
    parser.add_argument("--xgrammar", metavar="CASES", help="measure xgrammar on these cases")
    args = parser.parse_args()
    if args.xgrammar:
        run_xgrammar(args.xgrammar)
    else:
        run_native(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
