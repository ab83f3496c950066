"""How often a JSON reply comes back complete and valid: ``json_object`` requests, and
``json_object`` requests whose schema is only in the prompt (as instructor, pydantic-ai,
the AI SDK and LiteLLM send them), on the old code and the new, in one run.

Not a test: it measures. Two servers run side by side on the same engine and model, one
from this tree and one from another revision's ``src`` (``--old-rev``, extracted with
``git archive``), and the requests alternate between them (old, new, new, old, ...), so
machine noise falls on both alike. Every request uses the server's default sampling
settings (temperature, top_p, max_tokens) with a fixed seed per prompt.

For each reply it records: the JSON parses and is an object, ``finish_reason`` is
``stop``, and (for the prompt-schema set) the object validates against the schema in the
prompt. It prints the counts per server and set and writes them as JSON (``--out``).

    .venv/bin/python bench/json_replies.py --engine llama_cpp
    .venv/bin/python bench/json_replies.py --engine picolm --picolm-binary stand-in
    .venv/bin/python bench/json_replies.py --engine picolm \\
        --picolm-binary /tmp/picolm/picolm --model /tmp/random-small.gguf

``stand-in`` is the tests' PicoLM stand-in (tests/support/fake_picolm.py) with its tiny
model; a real PicoLM needs a LLaMA-architecture GGUF (``bench/random_llama_gguf.py``
writes random-weight ones, whose replies are gibberish: what is measured there is that
every reply is complete and valid, not its content).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.picolm_setup import PicoLMFiles
from tests.support.server import RunningServer, run_server
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

ROOT = Path(__file__).resolve().parents[1]

# Plain json_object requests: what a user of JSON mode asks a small model for.
PLAIN_PROMPTS = [
    "Count the colors red, blue and green in this list: red, blue, red, green, blue, "
    "red. Answer in JSON.",
    "Give me a JSON object describing a cat: its name, age and favourite food.",
    "Return JSON with the keys city and country for the Eiffel Tower.",
    "Describe the weather today as JSON: temperature, sky and wind.",
    "List three fruits and their colours as a JSON object.",
    "Make a JSON object for a book: title, author, year.",
    "Convert this to JSON: name Alice, age 30, city Berlin.",
    "Give the capitals of France, Spain and Italy as a JSON object.",
    "Write a JSON object with a greeting message.",
    "Summarise this sentence as JSON with a topic and a mood: I love sunny days at the beach.",
    "Return a JSON object that maps the numbers one to five to their squares.",
    "Describe a car in JSON: make, model, colour, doors.",
    "As JSON, give a shopping list with items and quantities.",
    "Produce a JSON object for a user profile with username, email and a list of hobbies.",
    "What are the primary colours? Answer with a JSON object.",
    "Give me a recipe for pancakes as JSON with ingredients and steps.",
    "Return a JSON object with the days of the week and whether each is a weekend day.",
    "Classify the sentiment of 'This movie was terrible' as JSON.",
    "Tell me about the planet Mars in JSON.",
    "Make a JSON object describing a dog named Rex who is 4 years old.",
    "Extract the people and places from this text as JSON: Tom met Anna in Paris, then "
    "they went to Rome.",
    "Give a JSON object with three facts about water.",
    "Respond in JSON: what is 2 plus 2?",
    "Create a JSON object for a movie with title, director, year and a list of actors.",
]

_PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
_CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "country": {"type": "string"},
        "population": {"type": "integer"},
    },
    "required": ["name", "country", "population"],
}
_EVENT = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "day": {"type": "string", "enum": ["monday", "tuesday", "wednesday", "thursday"]},
        "attendees": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "day", "attendees"],
}
_REVIEW = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["sentiment", "score"],
}
_ITEMS = {
    "$defs": {
        "Item": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "quantity": {"type": "integer"}},
            "required": ["name", "quantity"],
            "title": "Item",
        }
    },
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
    "required": ["items"],
    "title": "ShoppingList",
}

# (schema, user text): the schema goes into the prompt in each client's own words.
SCHEMA_TASKS = [
    (_PERSON, "John Smith is 42 years old."),
    (_PERSON, "Our new colleague, Maria, just turned 29."),
    (_CITY, "Paris is the capital of France. About 2,100,000 people live there."),
    (_CITY, "Tokyo, in Japan, has around 14 million inhabitants."),
    (_EVENT, "Team lunch on Tuesday with Ann, Bob and Carl."),
    (_REVIEW, "This movie was wonderful, I loved every minute."),
    (_REVIEW, "The food was cold and the service slow."),
    (_ITEMS, "I need two apples, a loaf of bread and three bottles of milk."),
]


def _instructor(schema: dict[str, Any], text: str) -> list[dict[str, str]]:
    system = (
        "As a genius expert, your task is to understand the content and provide\n"
        "the parsed objects in json that match the following json_schema:\n\n\n"
        f"{json.dumps(schema, indent=2)}\n\n"
        "Make sure to return an instance of the JSON, not the schema itself\n"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def _pydantic_ai(schema: dict[str, Any], text: str) -> list[dict[str, str]]:
    system = (
        "\nAlways respond with a JSON object that's compatible with this schema:\n\n"
        f"{json.dumps(schema)}\n\nDon't include any text or Markdown fencing before or after.\n"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def _ai_sdk(schema: dict[str, Any], text: str) -> list[dict[str, str]]:
    system = (
        f"JSON schema:\n{json.dumps(schema, separators=(',', ':'))}\n"
        "You MUST answer with a JSON object that matches the JSON schema above."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def _litellm(schema: dict[str, Any], text: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": text},
        {
            "role": "user",
            "content": f"Use this JSON schema: \n    ```json\n    {json.dumps(schema)}\n    ```",
        },
    ]


CLIENT_FORMS = {
    "instructor": _instructor,
    "pydantic-ai": _pydantic_ai,
    "ai-sdk": _ai_sdk,
    "litellm": _litellm,
}


@dataclass
class Case:
    set_name: str
    messages: list[dict[str, str]]
    seed: int
    schema: dict[str, Any] | None = None


def cases(prompt_limit: int | None) -> list[Case]:
    plain = [
        Case("json_object", [{"role": "user", "content": prompt}], seed)
        for seed, prompt in enumerate(PLAIN_PROMPTS)
    ]
    in_prompt = [
        Case(f"schema in prompt ({client})", form(schema, text), seed, schema)
        for seed, (client, form, (schema, text)) in enumerate(
            (client, form, task) for task in SCHEMA_TASKS for client, form in CLIENT_FORMS.items()
        )
    ]
    if prompt_limit is not None:
        plain, in_prompt = plain[:prompt_limit], in_prompt[:prompt_limit]
    return plain + in_prompt


@dataclass
class Tally:
    runs: int = 0
    valid_json: int = 0
    stop: int = 0
    complete: int = 0  # valid JSON object and finish_reason stop
    schema_valid: int = 0
    errors: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def run_case(
    client: httpx.Client, server: RunningServer, model: str, case: Case, tally: Tally
) -> None:
    body = {
        "model": model,
        "messages": case.messages,
        "response_format": {"type": "json_object"},
        "seed": case.seed,
    }
    started = time.perf_counter()
    response = client.post(f"{server.openai_base_url}/chat/completions", json=body)
    tally.seconds += time.perf_counter() - started
    tally.runs += 1
    if response.status_code != 200:
        tally.errors += 1
        tally.failures.append(f"seed {case.seed}, {response.status_code}: {response.text[:160]}")
        return
    choice = response.json()["choices"][0]
    text = choice["message"]["content"] or ""
    stop = choice["finish_reason"] == "stop"
    tally.stop += stop
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    is_object = isinstance(value, dict)
    tally.valid_json += is_object
    tally.complete += is_object and stop
    if case.schema is not None and is_object:
        tally.schema_valid += jsonschema.Draft202012Validator(case.schema).is_valid(value)
    if not (is_object and stop):
        tally.failures.append(f"seed {case.seed}, {choice['finish_reason']}: {text[:160]!r}")


def extract_source(revision: str, into: Path) -> Path:
    """``revision``'s src directory, extracted from git."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def engine_config(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], str]:
    """The server configuration for the engine, and the served model's id."""
    if args.engine == "llama_cpp":
        return {"engine": "llama_cpp", "llama_cpp": {"parallel": 1}}, "SmolLM2-135M-Instruct"
    binary, model = args.picolm_binary, args.model
    if binary == "stand-in":
        (workdir / "stand-in").mkdir(parents=True, exist_ok=True)
        files = PicoLMFiles.create(workdir / "stand-in")
        # The tiny model with a context that fits the longest prompts here.
        model = str(
            build_tiny_llama_gguf(workdir / "stand-in" / "tiny-4k.gguf", context_length=4096)
        )
        binary = str(files.binary)
    section = {"binary": binary, "model_path": model, "model_id": "picolm-bench", "threads": 2}
    return {"engine": "picolm", "picolm": section}, "picolm-bench"


@contextlib.contextmanager
def servers(
    args: argparse.Namespace, workdir: Path
) -> Iterator[tuple[dict[str, RunningServer], str]]:
    """The old and the new server, and the model id they serve."""
    (workdir / "old").mkdir()
    old_src = extract_source(args.old_rev, workdir / "old")
    config, model = engine_config(args, workdir)
    config = {**config, "logging": {"log_requests": False}}
    with contextlib.ExitStack() as stack:
        running = {
            "old": stack.enter_context(
                run_server(config, workdir / "server-old", env={"PYTHONPATH": str(old_src)})
            ),
            "new": stack.enter_context(
                run_server(config, workdir / "server-new", env={"PYTHONPATH": str(ROOT / "src")})
            ),
        }
        yield running, model


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["llama_cpp", "picolm"], default="llama_cpp")
    parser.add_argument("--picolm-binary", default="stand-in", help="a PicoLM binary, or stand-in")
    parser.add_argument("--model", default="", help="the GGUF for a real PicoLM")
    parser.add_argument("--old-rev", default="main", help="the revision to compare with")
    parser.add_argument("--limit", type=int, default=None, help="at most this many per set")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.engine == "picolm" and args.picolm_binary != "stand-in" and not args.model:
        parser.error("--model is needed with a real PicoLM binary")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    tallies: dict[tuple[str, str], Tally] = {}
    with tempfile.TemporaryDirectory(prefix="json-replies-") as tmp:
        workdir = Path(tmp)
        with servers(args, workdir) as (running, model), httpx.Client(timeout=900) as client:
            for index, case in enumerate(cases(args.limit)):
                order = ["old", "new"] if index % 2 == 0 else ["new", "old"]
                for name in order:
                    tally = tallies.setdefault((case.set_name, name), Tally())
                    run_case(client, running[name], model, case, tally)
                print(f"{index + 1} cases done", file=sys.stderr, flush=True)
    print(f"json_replies: engine {args.engine}, old = {args.old_rev}, started {started}")
    print(f"machine: {machine()}")
    columns = ("runs", "complete", "valid", "stop", "schema", "errors", "s/run")
    print(f"{'set':36} {'code':4} " + " ".join(f"{column:>9}" for column in columns))
    summary: dict[str, Any] = {
        "engine": args.engine,
        "old_rev": args.old_rev,
        "started": started,
        "machine": machine(),
        "sets": [],
    }
    for (set_name, name), tally in sorted(tallies.items()):
        values = (
            tally.runs,
            f"{tally.complete} ({tally.complete / tally.runs:.0%})",
            tally.valid_json,
            tally.stop,
            tally.schema_valid if set_name != "json_object" else "-",
            tally.errors,
            f"{tally.seconds / tally.runs:.2f}",
        )
        print(f"{set_name:36} {name:4} " + " ".join(f"{value!s:>9}" for value in values))
        summary["sets"].append(
            {"set": set_name, "code": name, **{k: v for k, v in vars(tally).items()}}
        )
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
