"""Measure tool calling on the embedded model: ~30 agent-style requests over several tools
and schemas, every tool_choice mode, streamed and not.

Reports the share of returned calls that parse and validate against their tool's schema,
the share of required/named requests that produced a call to an allowed function, and
whether each streamed reply reassembles to exactly the non-streamed one.

    .venv/bin/python bench/tool_calls_eval.py [--base-url http://127.0.0.1:8080/v1]

Without --base-url it starts the server with the embedded model itself; with it,
``--model`` names the model that server serves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "SmolLM2-135M-Instruct"


def tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


TOOLS = {
    "weather": tool(
        "get_weather",
        "Get the current weather for a city",
        {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    ),
    "email": tool(
        "send_email",
        "Send an email",
        {
            "type": "object",
            "properties": {
                "to": {"type": "string"},
                "subject": {"type": "string"},
                "body": {"type": "string"},
                "cc": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            },
            "required": ["to", "subject", "body"],
            "additionalProperties": False,
        },
    ),
    "search": tool(
        "search_web",
        "Search the web",
        {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "max_results": {"type": "integer"},
                "safe": {"type": "boolean"},
            },
            "required": ["query"],
        },
    ),
    "calendar": tool(
        "create_event",
        "Create a calendar event",
        {
            "type": "object",
            "$defs": {
                "person": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
                    "required": ["name"],
                }
            },
            "properties": {
                "title": {"type": "string"},
                "date": {"type": "string", "format": "date"},
                "duration_minutes": {"type": "number"},
                "attendees": {"type": "array", "items": {"$ref": "#/$defs/person"}},
                "priority": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            },
            "required": ["title", "date"],
        },
    ),
    "calc": tool(
        "calculate",
        "Evaluate an arithmetic expression",
        {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    ),
    "time": tool("get_time", "The current time", {"type": "object", "properties": {}}),
}

QUESTIONS = [
    (["weather", "email"], "What's the weather like in Paris today?"),
    (["weather", "search"], "Find recent news about the Mars rover."),
    (["email", "calendar"], "Email alice@example.com that the meeting moved to Friday."),
    (["calendar", "time"], "Schedule a dentist appointment on 2025-03-14 for 30 minutes."),
    (["calc", "search"], "What is 17 * 23?"),
    (["weather", "time", "calc"], "What time is it?"),
    (["weather"], "Weather in Tokyo and in Rome please, in celsius."),
    (["search", "email", "weather", "calendar", "calc", "time"], "Look up the population of Peru."),
]


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def cases() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for index, (keys, question) in enumerate(QUESTIONS):
        tools = [TOOLS[key] for key in keys]
        first = tools[0]["function"]["name"]
        out.append({"tools": tools, "q": question, "choice": "required"})
        out.append({"tools": tools, "q": question, "choice": "auto"})
        out.append({"tools": tools, "q": question, "choice": named(tools[-1]["function"]["name"])})
        if index % 2 == 0:
            out.append({"tools": tools, "q": question, "choice": named(first), "parallel": False})
    out.append({"tools": [TOOLS["weather"]], "q": "Hello!", "choice": "none"})
    return out


def reassemble(stream: Any) -> tuple[str | None, list[tuple[str, str]], str | None]:
    content: str | None = None
    calls: dict[int, list[str]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            content = (content or "") + delta.content
        for part in delta.tool_calls or []:
            entry = calls.setdefault(part.index, ["", ""])
            entry[0] += part.function.name or ""
            entry[1] += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return content, [(calls[i][0], calls[i][1]) for i in sorted(calls)], finish


@contextlib.contextmanager
def server(base_url: str | None) -> Iterator[str]:
    if base_url:
        yield base_url
        return
    from tests.support.server import run_server

    with (
        tempfile.TemporaryDirectory() as workdir,
        run_server({"logging": {"level": "warning"}}, Path(workdir)) as running,
    ):
        yield running.openai_base_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url")
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    calls_total = calls_valid = forced_total = forced_called = 0
    stream_total = stream_same = errors = 0
    started = time.monotonic()
    with server(args.base_url) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        for number, case in enumerate(cases(), 1):
            params: dict[str, Any] = {
                "model": args.model,
                "messages": [{"role": "user", "content": case["q"]}],
                "tools": case["tools"],
                "tool_choice": case["choice"],
                "temperature": 0,
                "max_tokens": args.max_tokens,
            }
            if "parallel" in case:
                params["parallel_tool_calls"] = case["parallel"]
            schemas = {t["function"]["name"]: t["function"]["parameters"] for t in case["tools"]}
            allowed = set(schemas)
            if isinstance(case["choice"], dict):
                allowed = {case["choice"]["function"]["name"]}
            forced = case["choice"] == "required" or isinstance(case["choice"], dict)
            try:
                whole = client.chat.completions.create(**params).choices[0]
            except openai.APIStatusError as exc:
                errors += 1
                forced_total += forced
                print(f"{number:2d} ERROR {exc.status_code}: {exc.message}")
                continue
            calls = whole.message.tool_calls or []
            for call in calls:
                calls_total += 1
                try:
                    arguments = json.loads(call.function.arguments)
                    jsonschema.validate(arguments, schemas[call.function.name])
                    calls_valid += call.function.name in allowed
                except (ValueError, KeyError, jsonschema.ValidationError):
                    pass
            if forced:
                forced_total += 1
                forced_called += bool(calls) and all(c.function.name in allowed for c in calls)
            content, streamed, finish = reassemble(
                client.chat.completions.create(stream=True, **params)
            )
            same = (
                content == whole.message.content
                and streamed == [(c.function.name, c.function.arguments) for c in calls]
                and finish == whole.finish_reason
            )
            stream_total += 1
            stream_same += same
            shown = [f"{c.function.name}({c.function.arguments})" for c in calls]
            choice = case["choice"] if isinstance(case["choice"], str) else "named"
            print(
                f"{number:2d} {choice:8s} {whole.finish_reason:10s} stream=={same!s:5s} "
                + (" ".join(shown) if calls else repr((whole.message.content or "")[:60]))
            )
    elapsed = time.monotonic() - started

    def share(part: int, whole: int) -> str:
        return f"{part}/{whole} ({100 * part / whole:.0f}%)" if whole else "n/a"

    print()
    print(f"requests: {len(cases())} (each non-streamed and streamed), {elapsed:.0f} s")
    print(f"calls that parse and validate:         {share(calls_valid, calls_total)}")
    print(f"required/named that produced a call:   {share(forced_called, forced_total)}")
    print(f"streamed == non-streamed:              {share(stream_same, stream_total)}")
    print(f"error responses:                       {errors}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
