"""A stand-in for the PicoLM executable that follows its documented contract exactly.

Everything the server must cope with is reproduced (see the project's PicoLM notes):
argv parsed as ``picolm.c`` does (an unknown option, or an option without its value, is
"Unknown option" plus the usage text on stderr and exit status 1); the prompt read from
stdin when there is no ``-p``; "No prompt provided" and "Failed to load model" with exit
status 1; the stderr lines in PicoLM's order; ``-n N`` generating N+1 tokens; each token
written and flushed on its own (a multi-byte UTF-8 character as separate single bytes,
as byte-fallback tokens are); the end-of-sequence text ``</s>`` written when generation
stops on EOS; and a final ``\\n`` always. ``-c`` lowers the model's context; a prompt of
more tokens than the context generates nothing, and generation stops at the context.

``--cache FILE`` is honoured as PicoLM does it, off-by-one included (see
:func:`fed_tokens`), with files in PicoLM's format and size.

What it generates is scripted from the prompt, in the manner of simonw/llm's fake model.
Behaviour directives (anywhere in the prompt; the last one wins):

``[[reply:TEXT]]``
    The reply is TEXT, as word tokens (``" word"``, see :func:`reply_pieces`); when TEXT
    ends within the budget the EOS token follows. A prompt that already ends with the
    start of TEXT (a reply being continued) gets the rest of TEXT, as a model that
    means to write TEXT would write it (see :func:`continued_reply`).
``[[eos-now]]``
    EOS is the first token (an empty reply).
``[[crash]]``
    A few tokens, then an error line on stderr and exit status 3.
``[[segv]]``
    A few tokens, then the process kills itself with SIGSEGV.
``[[hang]]``
    A few tokens, then it sleeps forever.
``[[exit:N]]``
    A few tokens, then an error line on stderr (with a file path and a piece of the
    prompt, as real errors can have) and exit status N.
``[[exit-early:N]]``
    The same, but right after loading the model: no ``Prompt:`` line, no token.
``[[abort]]``
    A few tokens, then SIGABRT (a failed assertion).
``[[flood]]``
    A few tokens, then stdout written as fast as a pipe takes it, forever.
``[[flood-stderr]]``
    A few tokens, then stderr written as fast as a pipe takes it (long lines), forever.
``[[garbage]]``
    Bytes that are not UTF-8 (and control characters) as the reply, then EOS.

Modifiers, which combine with the behaviour:

``[[slow:SECONDS]]``
    Sleep SECONDS before each generated token.
``[[child]]``
    Start a child process that sleeps forever (same process group) before generating.

Without a behaviour directive the reply is a deterministic run of words chosen by a
hash of the token ids fed at the prompt's positions (the prompt's token ids when no
cache is used; and of the seed when the temperature is above 0), and
never EOS, like a model whose EOS logit is hopelessly low: it runs to the budget.

When the environment variable ``FAKE_PICOLM_LOG`` names a file, each run appends JSON
lines to it: one when it starts (pid, argv, prompt) and one per child it starts; read
them back with :func:`read_history`.

The model must be a readable GGUF file (the tiny one from ``tiny_llama_gguf`` is what
tests use); its shape and context length come from its metadata. Prompt tokens are
counted with the project's exact PicoLM tokenizer when it is importable.

Run it through :func:`install_fake_picolm`, which writes an executable wrapper.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

EOS_TEXT = b"</s>"
LOG_ENV = "FAKE_PICOLM_LOG"
CRASH_EXIT_STATUS = 3
# Tokens written before [[crash]], [[segv]] and [[hang]] take effect.
TOKENS_BEFORE_FAILURE = 2
KVCACHE_MAGIC = 0x4B564350  # "KVCP", as PicoLM's

_WORDS = (
    "the", "robot", "said", "hello", "to", "world", "and", "it", "was", "morning",
    "light", "sea", "is", "deep", "little", "house", "on", "hill", "wind", "trees",
)  # fmt: skip

_DIRECTIVE = re.compile(
    r"\[\[(reply|eos-now|crash|segv|hang|exit|exit-early|abort|flood|flood-stderr|garbage"
    r"|slow|child)(?::(.*?))?\]\]",
    re.S,
)
_BEHAVIOURS = (
    "reply", "eos-now", "crash", "segv", "hang", "exit", "exit-early", "abort", "flood",
    "flood-stderr", "garbage",
)  # fmt: skip
# Failures that strike after TOKENS_BEFORE_FAILURE tokens.
FAILURES = ("crash", "segv", "hang", "exit", "abort", "flood", "flood-stderr")
# What [[garbage]] writes: invalid UTF-8 (a lone continuation byte, a truncated sequence,
# an overlong form, 0xFF), a NUL, an escape sequence and a carriage return.
GARBAGE = [b"\x80", b"ok\xe2\x82", b"\xc0\xaf", b"\xff", b"\x00", b"\x1b[2J", b"\r", b" end"]
# A line a failing engine writes to stderr: never to be shown to the client.
SECRET_STDERR = "fatal: cannot map /home/alice/private/model.gguf near prompt text"


def _usage(prog: str) -> str:
    return (
        "PicoLLM — ultra-lightweight LLM inference engine\n\n"
        f"Usage: {prog} <model.gguf> [options]\n"
        "\nGeneration options:\n"
        "  -p <prompt>    Input prompt (or pipe via stdin)\n"
        "  -n <int>       Max tokens to generate (default: 256)\n"
        "  -t <float>     Temperature (default: 0.8, 0=greedy)\n"
        "  -k <float>     Top-p / nucleus sampling (default: 0.9)\n"
        "  -s <int>       RNG seed (default: 42)\n"
        "  -c <int>       Context length override\n"
        "  -j <int>       Number of threads (default: 4)\n"
        "\nAdvanced options:\n"
        "  --json         Grammar-constrained JSON output mode\n"
        "  --cache <file> KV cache file (saves/loads prompt state)\n"
    )


# ---- what the reply is made of ------------------------------------------------------------


def reply_pieces(text: str) -> list[bytes]:
    """The tokens ``[[reply:TEXT]]`` is written as, each one write to stdout.

    Words separated by single spaces, each with a leading space (SentencePiece's ``▁``);
    a non-ASCII character becomes one token per UTF-8 byte (byte fallback). The pieces
    joined are exactly ``" " + text``, UTF-8 encoded.
    """
    pieces: list[bytes] = []
    for word in text.split(" "):
        run = " "
        for char in word:
            if char.isascii():
                run += char
                continue
            if run:
                pieces.append(run.encode())
                run = ""
            pieces.extend(bytes([b]) for b in char.encode("utf-8"))
        if run:
            pieces.append(run.encode())
    return pieces


def continued_reply(prompt: str, text: str) -> list[bytes]:
    """The pieces of ``[[reply:TEXT]]`` for a prompt: when the prompt ends with the
    first K characters of TEXT (the longest such K), the rest of TEXT, joined exactly
    (no leading space: it continues a word); otherwise all of it."""
    for length in range(len(text), 0, -1):
        if prompt.endswith(text[:length]):
            rest = text[length:]
            if not rest:
                return []
            pieces = reply_pieces(rest)
            pieces[0] = pieces[0][1:]  # reply_pieces joins to " " + rest
            return [piece for piece in pieces if piece]
    return reply_pieces(text)


def default_pieces(token_ids: list[int], seed: int | None, count: int) -> list[bytes]:
    """The deterministic reply for a prompt without a ``[[reply:...]]`` directive."""
    key = json.dumps([token_ids, seed]).encode()
    digest = hashlib.sha256(key).digest()
    pieces = []
    for index in range(count):
        if index % len(digest) == 0 and index:
            digest = hashlib.sha256(digest).digest()
        pieces.append((" " + _WORDS[digest[index % len(digest)] % len(_WORDS)]).encode())
    return pieces


# ---- C-style argument parsing -------------------------------------------------------------


def _atoi(text: str) -> int:
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def _c_int(value: int) -> int:
    """C's ``int`` of a wider integer: two's-complement wrap to 32 bits."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def _c_atoi(text: str) -> int:
    """glibc's ``atoi``: ``(int) strtol(...)``, strtol saturating at the long range."""
    return _c_int(max(min(_atoi(text), 2**63 - 1), -(2**63)))


def _atof(text: str) -> float:
    match = re.match(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)", text)
    return float(match.group(1)) if match else 0.0


@dataclass
class Options:
    model_path: str
    prompt: bytes | None = None
    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.9
    seed: int = 42
    context_override: int = 0
    threads: int = 4
    json_mode: bool = False
    cache_file: str | None = None


class UsageError(Exception):
    pass


def parse_args(argv: list[str]) -> Options:
    """``picolm.c``'s argument loop: ``argv[1]`` is the model, options follow."""
    if len(argv) < 2:
        raise UsageError("")
    options = Options(model_path=argv[1])
    i = 2
    while i < len(argv):
        arg = argv[i]
        has_value = i + 1 < len(argv)
        value = argv[i + 1] if has_value else ""
        if arg == "-p" and has_value:
            options.prompt = os.fsencode(value)
        elif arg == "-n" and has_value:
            options.max_tokens = _c_atoi(value)
        elif arg == "-t" and has_value:
            options.temperature = _atof(value)
        elif arg == "-k" and has_value:
            options.top_p = _atof(value)
        elif arg == "-s" and has_value:
            options.seed = _atoi(value) % 2**64
        elif arg == "-c" and has_value:
            options.context_override = _atoi(value)
        elif arg == "-j" and has_value:
            options.threads = _atoi(value)
        elif arg == "--json":
            options.json_mode = True
            i += 1
            continue
        elif arg == "--cache" and has_value:
            options.cache_file = value
        else:
            raise UsageError(f"Unknown option: {arg}\n")
        i += 2
    return options


# ---- the model file ------------------------------------------------------------------------


@dataclass
class ModelShape:
    n_embd: int = 0
    n_ffn: int = 0
    n_heads: int = 0
    n_kv_heads: int = 0
    n_layers: int = 0
    vocab_size: int = 0
    max_seq: int = 2048
    rope_base: float = 10000.0
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_heads if self.n_heads else 0

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALARS.update({11: "<q", 12: "<d"})


def read_model_shape(path: str) -> ModelShape:
    """Read a GGUF's metadata (no tensors); raises ValueError/OSError when it is not one."""
    with open(path, "rb") as file:
        data = file.read()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ValueError("truncated GGUF")
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += size
        return value

    def string() -> str:
        nonlocal pos
        length = take("<Q")
        if pos + length > len(data):
            raise ValueError("truncated GGUF")
        text = data[pos : pos + length].decode("utf-8", "replace")
        pos += length
        return text

    def value(vtype: int) -> Any:
        if vtype in _SCALARS:
            return take(_SCALARS[vtype])
        if vtype == 8:
            return string()
        if vtype == 9:
            item_type, count = take("<I"), take("<Q")
            items = [value(item_type) for _ in range(count)]
            return items if count < 64 else len(items)
        raise ValueError(f"Unknown GGUF metadata type: {vtype}")

    if take("<I") != 0x46554747:
        raise ValueError("Invalid GGUF magic")
    if take("<I") not in (2, 3):
        raise ValueError("Unsupported GGUF version")
    take("<Q")  # tensor count
    n_kv = take("<Q")
    values = {}
    for _ in range(n_kv):
        key = string()
        values[key] = value(take("<I"))
    arch = values.get("general.architecture", "llama")
    shape = ModelShape(values=values)
    shape.n_embd = int(values.get(f"{arch}.embedding_length", 0))
    shape.n_ffn = int(values.get(f"{arch}.feed_forward_length", 0))
    shape.n_heads = int(values.get(f"{arch}.attention.head_count", 0))
    shape.n_kv_heads = int(values.get(f"{arch}.attention.head_count_kv", shape.n_heads))
    shape.n_layers = int(values.get(f"{arch}.block_count", 0))
    shape.max_seq = int(values.get(f"{arch}.context_length", 2048))
    shape.rope_base = float(values.get(f"{arch}.rope.freq_base", 10000.0))
    tokens = values.get("tokenizer.ggml.tokens", 0)
    shape.vocab_size = int(values.get(f"{arch}.vocab_size", tokens))
    if not (shape.n_embd and shape.n_layers and shape.n_heads):
        raise ValueError("not a LLaMA model")
    return shape


def encode_prompt(model_path: str, prompt: bytes) -> list[int]:
    """PicoLM's prompt token ids (BOS first): exact when the project's tokenizer imports."""
    try:
        from picolm_server.engines.picolm.tokenizer import PicoLMTokenizer
    except ImportError:
        words = prompt.replace(b"\n", b" ").split(b" ")
        return [1, *(3 + (sum(word) % 900) for word in words if word)]
    return PicoLMTokenizer.from_gguf(Path(model_path)).encode(prompt)


# ---- --cache: saved prompt state --------------------------------------------------------
# Files in PicoLM's format, size-exact: the header (magic, positions, layers, kv_dim), then
# for every layer the K rows of the positions, then for every layer the V rows, each row
# kv_dim fp16 values. The stand-in's "state" of a position is the token id fed there (in
# the first 4 bytes of each of its rows), which is what determines PicoLM's KV row given
# the positions before it: a reply is a function of the whole sequence of fed tokens.


def _row(token_id: int, row_bytes: int) -> bytes:
    return struct.pack("<I", token_id).ljust(row_bytes, b"\0")[:row_bytes]


def cache_load(path: str, shape: ModelShape, err: BinaryIO) -> list[int]:
    """The token ids fed at the positions of a valid cache file (empty when none is)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return []
    if len(data) < 16:
        return []
    magic, n_pos, n_layers, kv_dim = struct.unpack_from("<4I", data)
    if magic != KVCACHE_MAGIC:
        err.write(b"kvcache_load: invalid magic\n")
        return []
    if n_layers != shape.n_layers or kv_dim != shape.kv_dim:
        err.write(
            f"kvcache_load: model mismatch (layers={n_layers}/{shape.n_layers}, "
            f"kv_dim={kv_dim}/{shape.kv_dim})\n".encode()
        )
        return []
    if n_pos > shape.max_seq:
        err.write(
            f"kvcache_load: cached {n_pos} positions exceeds max_seq_len {shape.max_seq}\n".encode()
        )
        return []
    row_bytes = kv_dim * 2
    if len(data) < 16 + 2 * n_layers * n_pos * row_bytes:  # PicoLM: a short read, 0
        return []
    ids = [struct.unpack_from("<I", data, 16 + p * row_bytes)[0] for p in range(n_pos)]
    err.write(f"KV cache loaded: {n_pos} positions from {path}\n".encode())
    return ids


def cache_save(path: str, shape: ModelShape, fed: list[int], err: BinaryIO) -> None:
    """Write the state of positions ``0..len(fed)-1`` as PicoLM's kvcache_save does."""
    n_pos = len(fed)
    if n_pos <= 0 or n_pos > shape.max_seq:
        return
    row_bytes = shape.kv_dim * 2
    rows = b"".join(_row(token_id, row_bytes) for token_id in fed)
    try:
        with open(path, "wb") as file:
            file.write(struct.pack("<4I", KVCACHE_MAGIC, n_pos, shape.n_layers, shape.kv_dim))
            for _ in range(2 * shape.n_layers):  # K for every layer, then V
                file.write(rows)
    except OSError:
        err.write(f"kvcache_save: cannot open {path}\n".encode())
        return
    err.write(f"KV cache saved: {n_pos} positions to {path}\n".encode())


def fed_tokens(cached: list[int], token_ids: list[int]) -> tuple[list[int], int]:
    """The token fed at each position up to the first sampled one, and where generation's
    first forward pass is, as picolm.c's loop does it with a cache of ``len(cached)``
    positions: positions below it come from the file, the next one is computed with the
    prompt token *before* it (PicoLM's off-by-one), later ones with their own token.
    """
    n_prompt = len(token_ids)
    start_pos = len(cached) if 0 < len(cached) <= n_prompt else 0
    if not start_pos:
        return list(token_ids), n_prompt - 1
    fed = [*cached, token_ids[start_pos - 1], *token_ids[start_pos + 1 :]]
    return fed, max(n_prompt - 1, start_pos)


# ---- history ---------------------------------------------------------------------------------


def _log(entry: dict[str, Any]) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@dataclass
class Invocation:
    """One run of the fake, as its log lines tell it."""

    pid: int
    argv: list[str]
    prompt: str | None
    child_pids: list[int] = field(default_factory=list)
    exit: str | None = None
    session: int | None = None


def read_history(path: Path) -> list[Invocation]:
    """The runs recorded in a ``FAKE_PICOLM_LOG`` file, oldest first."""
    runs: dict[int, Invocation] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        pid = entry["pid"]
        if entry["event"] == "start":
            runs[pid] = Invocation(
                pid, entry["argv"], entry["prompt"], session=entry.get("session")
            )
        elif entry["event"] == "child" and pid in runs:
            runs[pid].child_pids.append(entry["child_pid"])
        elif entry["event"] == "exit" and pid in runs:
            runs[pid].exit = entry["how"]
    return list(runs.values())


# ---- the program -------------------------------------------------------------------------------


@dataclass
class Script:
    behaviour: str | None = None
    reply: str = ""
    slow: float = 0.0
    child: bool = False


def read_script(prompt: str) -> Script:
    script = Script()
    for match in _DIRECTIVE.finditer(prompt):
        name, arg = match.group(1), match.group(2)
        if name in _BEHAVIOURS:
            script.behaviour = name
            script.reply = arg or ""
        elif name == "slow":
            script.slow = _atof(arg or "0")
        elif name == "child":
            script.child = True
    return script


def main(argv: list[str]) -> int:
    out = sys.stdout.buffer
    err = sys.stderr.buffer
    prog = argv[0] if argv else "picolm"

    def say(line: str) -> None:
        err.write(line.encode() + b"\n")
        err.flush()

    try:
        options = parse_args(argv)
    except UsageError as exc:
        err.write(str(exc).encode() + _usage(prog).encode())
        return 1

    prompt = options.prompt
    if prompt is None and not os.isatty(0):
        prompt = sys.stdin.buffer.read()
    prompt = (prompt or b"").split(b"\0", 1)[0]  # a C string
    _log(
        {
            "event": "start",
            "pid": os.getpid(),
            "argv": argv,
            "prompt": prompt.decode("utf-8", "replace"),
            # Its session (POSIX): a new one when the server started it in its own group.
            "session": os.getsid(0) if hasattr(os, "getsid") else None,
        }
    )
    if not prompt:
        err.write(b"No prompt provided. Use -p or pipe via stdin.\n" + _usage(prog).encode())
        return 1

    say(f"Loading model: {options.model_path}")
    script = read_script(prompt.decode("utf-8", "replace"))
    if script.behaviour == "exit-early":
        say(SECRET_STDERR)
        _log({"event": "exit", "pid": os.getpid(), "how": "exit-early"})
        return _atoi(script.reply or "1")
    try:
        shape = read_model_shape(options.model_path)
    except (OSError, ValueError) as exc:
        say(f"Cannot open file: {options.model_path}" if isinstance(exc, OSError) else str(exc))
        say("Failed to load model")
        return 1
    if 0 < options.context_override < shape.max_seq:
        shape.max_seq = options.context_override
    say("Model config:")
    say(f"  n_embd={shape.n_embd}, n_ffn={shape.n_ffn}, n_heads={shape.n_heads}, "
        f"n_kv_heads={shape.n_kv_heads}")  # fmt: skip
    say(f"  n_layers={shape.n_layers}, vocab_size={shape.vocab_size}, max_seq={shape.max_seq}")
    say(f"  head_dim={shape.head_dim}, rope_base={shape.rope_base:.1f}")
    kv_mb = shape.n_layers * shape.max_seq * shape.kv_dim * 2 * 2 / (1024 * 1024)
    say(f"Allocating 0.04 MB for runtime state (+ {kv_mb:.2f} MB FP16 KV cache)")
    say(f"Tokenizer loaded: {shape.vocab_size} tokens, bos=1, eos=2")
    if options.json_mode:
        say("JSON grammar mode enabled")

    cached: list[int] = []
    if options.cache_file:
        cached = cache_load(options.cache_file, shape, err)
    token_ids = encode_prompt(options.model_path, prompt)
    n_prompt = len(token_ids)
    start_pos = len(cached) if 0 < len(cached) <= n_prompt else 0
    if start_pos:
        say(f"Skipping {start_pos} cached prompt tokens")
    say(
        f"Prompt: {n_prompt} tokens, generating up to {options.max_tokens} "
        f"(temp={options.temperature:.2f}, top_p={options.top_p:.2f}, "
        f"threads={options.threads})"
    )
    say("---")
    started = time.monotonic()

    if script.child:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)"],
            stdin=subprocess.DEVNULL,
        )
        _log({"event": "child", "pid": os.getpid(), "child_pid": child.pid})

    # picolm.c: positions from the last prompt token to min(n_prompt + N, max_seq) - 1
    # are generation steps: N + 1 tokens, fewer when the context ends first.
    fed, first_sampling_pos = fed_tokens(cached, token_ids)
    # `int total_steps = n_prompt + max_tokens;` overflows past INT_MAX.
    total_steps = min(_c_int(n_prompt + options.max_tokens), shape.max_seq)
    steps = max(0, total_steps - first_sampling_pos)
    seed = options.seed if options.temperature > 0 else None
    if script.behaviour == "reply":
        pieces = [*continued_reply(prompt.decode("utf-8", "replace"), script.reply), EOS_TEXT]
    elif script.behaviour == "eos-now":
        pieces = [EOS_TEXT]
    elif script.behaviour == "garbage":
        pieces = [*GARBAGE, EOS_TEXT]
    else:
        # The reply depends on the state the model computed: the tokens fed at every
        # position (a wrong cache or an uncorrected prompt gives another reply).
        pieces = default_pieces(fed, seed, steps)

    generated = 0
    for index in range(steps):
        if script.behaviour in FAILURES and index == TOKENS_BEFORE_FAILURE:
            _fail(script, say)
        if script.slow:
            time.sleep(script.slow)
        piece = pieces[index] if index < len(pieces) else EOS_TEXT
        out.write(piece)
        out.flush()
        generated += 1
        if piece == EOS_TEXT:
            break
    if script.behaviour in FAILURES and generated < TOKENS_BEFORE_FAILURE:
        _fail(script, say)
    out.write(b"\n")
    out.flush()
    if options.cache_file and n_prompt > 0:
        cache_save(options.cache_file, shape, fed[:n_prompt], err)

    elapsed = time.monotonic() - started
    prefill = n_prompt - start_pos
    say("---")
    say(
        f"Prefill: {prefill} tokens in 0.00s (0.0 tok/s)"
        + (" [partially cached]" if start_pos else "")
    )
    say(f"Generation: {generated} tokens in {elapsed:.2f}s (0.0 tok/s)")
    say(f"Total: {elapsed:.2f}s")
    say(f"Memory: {kv_mb + 0.04:.2f} MB runtime state (FP16 KV cache)")
    _log({"event": "exit", "pid": os.getpid(), "how": "ok"})
    return 0


def _fail(script: Script, say: Any) -> None:
    behaviour = script.behaviour
    if behaviour == "exit":
        say(SECRET_STDERR)
        _log({"event": "exit", "pid": os.getpid(), "how": "exit"})
        os._exit(_atoi(script.reply or "1"))
    if behaviour == "abort":
        _log({"event": "exit", "pid": os.getpid(), "how": "abort"})
        os.abort()
    if behaviour == "flood":
        block = b"flood " * 4096
        while True:
            sys.stdout.buffer.write(block)
            sys.stdout.buffer.flush()
    if behaviour == "flood-stderr":
        line = b"progress " + b"#" * 2000 + b"\n"
        while True:
            sys.stderr.buffer.write(line * 16)
            sys.stderr.buffer.flush()
    if behaviour == "crash":
        say("fatal: simulated engine failure (out of memory)")
        _log({"event": "exit", "pid": os.getpid(), "how": "crash"})
        os._exit(CRASH_EXIT_STATUS)
    if behaviour == "segv":
        _log({"event": "exit", "pid": os.getpid(), "how": "segv"})
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGSEGV)
    while True:  # hang
        time.sleep(3600)


WRAPPER = """#!{python}
import sys
sys.path[:0] = {paths!r}
from tests.support.fake_picolm import main
sys.exit(main(sys.argv))
"""


def install_fake_picolm(directory: Path, name: str = "picolm") -> Path:
    """Write an executable that runs this fake with the current interpreter."""
    root = Path(__file__).resolve().parents[2]
    path = Path(directory) / name
    path.write_text(WRAPPER.format(python=sys.executable, paths=[str(root), str(root / "src")]))
    path.chmod(0o755)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv))
