"""The PicoLM engine: one ``picolm`` subprocess per generation.

Follows the engine's contract (see the project docs): the prompt goes on stdin, never on
the command line, where every user of the machine could read it; ``-n N`` generates N+1
tokens, so N-1 is passed; stdout carries the reply followed by the end-of-sequence
token's text and one newline, neither of which is reply text, so the end of the stream is
held back until the process ends; bytes are decoded incrementally because a UTF-8
character can be split across writes; the token counts come from stderr. The process runs
in its own process group and the whole group is killed when the generation is closed
early, so nothing it starts outlives the request.

A prompt is tokenized in :meth:`PicoLMEngine.admit`, before the request waits for a
generation slot, and at a cost bounded by the context: a prompt whose length alone shows
it cannot fit is refused untokenized. Reading the reply is bounded as well: the running
token count is kept incrementally, the event loop gets a turn after every read, and an
engine that writes more than its token budget can print is stopped.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import contextlib
import functools
import logging
import os
import re
import signal
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from ...errors import (
    ContextLengthExceededError,
    EmbeddingsUnsupportedError,
    EngineError,
    InvalidRequestError,
)
from ...gguf import GGUFMetadata
from ..base import (
    EmbeddingInput,
    Embeddings,
    EngineAbilities,
    EngineHealth,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    PromptAccepted,
    TextDelta,
    TokenLimitExceeded,
)
from .crafted_prompt import craft_prompt
from .process_group import kill_group, spawn_options
from .prompt_store import CacheLease, PromptCache
from .tokenizer import PicoLMTokenizer

logger = logging.getLogger("picolm_server.engine.picolm")

_PROMPT_LINE = re.compile(r"^Prompt: (\d+) tokens")
_CACHED_LINE = re.compile(r"^Skipping (\d+) cached prompt tokens")
_GENERATED_LINE = re.compile(r"^Generation: (\d+) tokens")
# How long a stopped engine's stdout may take to reach its end.
_DRAIN_SECONDS = 5.0
_READ_SIZE = 4096
# Prompts up to this many bytes tokenize in a few milliseconds: they never wait behind a
# long one, which gets the single worker thread of its own.
_SMALL_PROMPT_BYTES = 16 * 1024
# A stderr line is kept (for the log) up to this many characters.
_STDERR_LINE_CHARS = 500
# A shared prefix (system prompt, tools) shorter than this is not worth a state of its own.
MIN_SHARED_PREFIX = 32
_MAX_PREFIXES_TRACKED = 256
# Saved states PicoLM did not read, in a row, before reuse is turned off for good.
_CACHE_STRIKES = 3


@dataclass(frozen=True)
class PicoLMOptions:
    binary: Path
    model_path: Path
    model_id: str
    threads: int
    context_length: int


class TrailerFilter:
    """Holds back the end of PicoLM's stdout until the process has ended.

    The stream is ``reply [EOS text] "\\n"``; any suffix that could still turn out to be
    the start of that trailer stays pending.
    """

    def __init__(self, eos_text: str) -> None:
        self.eos_text = eos_text
        self._trailers = tuple(t for t in (eos_text + "\n", "\n") if t)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes) -> str:
        self._pending += self._decoder.decode(data)
        keep = 0
        for trailer in self._trailers:
            for length in range(min(len(trailer), len(self._pending)), keep, -1):
                if self._pending.endswith(trailer[:length]):
                    keep = length
                    break
        released = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return released

    def finish(self) -> tuple[str, bool]:
        """The rest of the reply at end of output, and whether the EOS text ended it."""
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        rest = rest.removesuffix("\n")
        if self.eos_text and rest.endswith(self.eos_text):
            return rest[: -len(self.eos_text)], True
        return rest, False


@dataclass
class _StderrReport:
    """What PicoLM said on stderr, parsed as the lines arrive."""

    prompt_tokens: int | None = None
    cached_tokens: int = 0
    generated_tokens: int | None = None
    lines: list[str] = field(default_factory=list)
    prompt_seen: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, line: str) -> None:
        self.lines.append(line)
        del self.lines[:-20]
        if match := _PROMPT_LINE.match(line):
            self.prompt_tokens = int(match.group(1))
            self.prompt_seen.set()
        elif match := _CACHED_LINE.match(line):
            self.cached_tokens = int(match.group(1))
        elif match := _GENERATED_LINE.match(line):
            self.generated_tokens = int(match.group(1))

    def tail(self) -> str:
        return " | ".join(line for line in self.lines if line.strip()) or "(nothing)"


class _CacheNotHonoured(Exception):
    """PicoLM did not read the prompt or the saved state the way the server planned."""

    def __init__(self, message: str, *, prompt_differs: bool) -> None:
        super().__init__(message)
        self.prompt_differs = prompt_differs


@dataclass
class _Run:
    """A run on a leased KV file: what PicoLM must report, and whether it ended cleanly."""

    lease: CacheLease
    expected_prompt_tokens: int
    clean: bool = False


class PicoLMEngine:
    """Runs the user's PicoLM binary for each generation.

    With ``tokenizer`` (the exact reproduction of PicoLM's), prompts that do not fit are
    refused before a process starts; with ``prompt_cache`` too, each run starts from the
    longest saved state that is a token prefix of its prompt (see :mod:`.prompt_store`).
    A reply held to a JSON schema is written piece by piece (see :mod:`.json_mode`).
    """

    def __init__(
        self,
        options: PicoLMOptions,
        metadata: GGUFMetadata,
        *,
        tokenizer: PicoLMTokenizer | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.options = options
        self.tokenizer = tokenizer
        self.prompt_cache = prompt_cache if tokenizer is not None else None
        # PicoLM writes schema-exact JSON piece by piece (json_mode); it reads all of
        # stdin, then tokenizes it as a C string, so a NUL ends the prompt.
        self.abilities = EngineAbilities(
            output_control="schema",
            prompt_accepts_nul=False,
            tokenize=tokenizer is not None,
            prompt_reuse=self.prompt_cache is not None,
        )
        self._cache_usable = self.prompt_cache is not None
        self._cache_strikes = 0  # saved states PicoLM did not read, in a row
        self._prefix_sightings: dict[int, int] = {}
        self.eos_text = metadata.token_text("eos") or "</s>"
        model_context = metadata.context_length or 2048
        # PicoLM's -c can only lower the model's own context length.
        self.context_length = min(options.context_length, model_context)
        self.model = ModelInfo.of_file(
            options.model_id, options.model_path, self.context_length, "picolm"
        )
        # One thread for long prompts, so that many of them cannot take every thread.
        self._long_prompts = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="picolm-tokenize"
        )
        # The most bytes one generated token can print (without a tokenizer, the 256
        # bytes of a merge buffer: a generous bound for SentencePiece vocabularies).
        self._piece_bytes = tokenizer.max_piece_bytes if tokenizer is not None else 256

    def close(self) -> None:
        """Nothing to free: PicoLM holds no memory between generations (a process per
        generation), and every generation's process ends with it."""

    def health(self) -> EngineHealth:
        binary, model = self.options.binary, self.options.model_path
        if not os.access(binary, os.X_OK):
            return EngineHealth(False, f"picolm binary {binary} is missing or not executable")
        if not model.is_file():
            return EngineHealth(False, f"model file {model} is missing")
        reuse_fault = self.prompt_cache.fault if self.prompt_cache is not None else None
        if reuse_fault is not None:
            return EngineHealth(True, f"picolm ({binary}); prompt reuse off: {reuse_fault}")
        return EngineHealth(True, f"picolm ({binary})")

    def grammar_error(self, gbnf: str) -> str | None:
        return "PicoLM does not take grammars"

    def tokenize(
        self, text: str, *, add_special: bool, parse_special: bool, limit: int | None = None
    ) -> list[int]:
        """PicoLM's own tokens (it reads marker text as text: ``parse_special`` changes
        nothing). Without its vocabulary (unreadable model file), an estimate is not
        given: the abilities say ``tokenize`` is off and this refuses."""
        if self.tokenizer is None:
            raise InvalidRequestError("The model's vocabulary could not be read: cannot tokenize.")
        if limit is not None and "\0" not in text:  # the floor's arithmetic holds then
            floor = self.tokenizer.min_prompt_tokens(len(text.encode("utf-8")))
            if floor - (not add_special) > limit:  # the floor counts a BOS
                raise TokenLimitExceeded(floor - (not add_special), at_least=True)
        tokens = self.tokenizer.encode(text, bos=add_special)
        if limit is not None and len(tokens) > limit:
            raise TokenLimitExceeded(len(tokens))
        return tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        if self.tokenizer is None:
            raise InvalidRequestError(
                "The model's vocabulary could not be read: cannot detokenize."
            )
        vocabulary = self.tokenizer.vocab_size
        for token in tokens:
            if not 0 <= token < vocabulary:
                raise InvalidRequestError(
                    f"Token id {token} is not in the model's vocabulary (0 to {vocabulary - 1}).",
                    param="tokens",
                )
        return self.tokenizer.decode(list(tokens)).decode("utf-8", errors="replace")

    def token_piece(self, token: int) -> bytes:
        self.detokenize([token])  # the vocabulary check
        assert self.tokenizer is not None
        return self.tokenizer.decode([token])

    def vocabulary_size(self) -> int:
        return self.tokenizer.vocab_size if self.tokenizer is not None else 0

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """PicoLM's own count (BOS included)."""
        if self.tokenizer is None:
            raise InvalidRequestError("The model's vocabulary could not be read: cannot count.")
        return self.tokenizer.count(request.prompt)

    async def embed(
        self, inputs: Sequence[EmbeddingInput], *, truncate: bool = False
    ) -> Embeddings:
        raise EmbeddingsUnsupportedError("PicoLM")

    def budget(self, request: GenerationRequest) -> int:
        """``max_tokens`` within what the context can hold: past it PicoLM's C ints
        overflow (2^31 and up gives an empty reply), and the context ends a reply first."""
        return min(request.max_tokens, self.context_length)

    def command(self, request: GenerationRequest) -> list[str]:
        """The argv for one generation. The prompt is not in it: it goes on stdin."""
        args = [
            str(self.options.binary),
            str(self.options.model_path),
            # PicoLM generates N+1 tokens for -n N.
            "-n", str(max(self.budget(request) - 1, 0)),
            "-t", f"{request.temperature:.4f}",
            "-k", f"{request.top_p:.4f}",
            "-c", str(self.context_length),
            "-j", str(self.options.threads),
        ]  # fmt: skip
        if request.seed is not None:
            args += ["-s", str(request.seed % 2**63)]
        if request.constraint is not None:
            args.append("--json")
        return args

    async def admit(self, request: GenerationRequest) -> GenerationRequest:
        """Tokenize the prompt and refuse it if it does not fit (before any slot is taken);
        the request is returned with its tokens."""
        if self.tokenizer is None or request.prompt_tokens is not None:
            return request
        size = len(request.prompt.encode("utf-8"))
        floor = self.tokenizer.min_prompt_tokens(size)
        if floor >= self.context_length:
            raise ContextLengthExceededError.prompt(floor, self.context_length, at_least=True)
        encode = functools.partial(self.tokenizer.encode, request.prompt)
        if size <= _SMALL_PROMPT_BYTES:
            tokens = await asyncio.to_thread(encode)
        else:
            tokens = await asyncio.get_running_loop().run_in_executor(self._long_prompts, encode)
        if len(tokens) >= self.context_length:
            raise ContextLengthExceededError.prompt(len(tokens), self.context_length)
        return replace(request, prompt_tokens=tuple(tokens))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        constraint = request.constraint
        if constraint is None or constraint.json_schema is None:
            async with contextlib.aclosing(self._generate_text(request)) as events:
                async for event in events:
                    yield event
            return
        prompt_tokens = None
        if self.tokenizer is not None:
            request = await self.admit(request)
            prompt_tokens = len(request.prompt_tokens or ())
        # Loaded with the first reply held to a schema (README, "What the server loads").
        from .json_mode import generate_schema_json

        guided = generate_schema_json(
            self._generate_text,
            request,
            constraint.json_schema,
            prompt_tokens=prompt_tokens,
            count_tokens=self._reply_tokens,
            keeps_state=self._cache_usable,
        )
        async with contextlib.aclosing(guided) as events:
            async for event in events:
                yield event

    def _reply_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text.encode("utf-8")) // 3 + 1
        return self.tokenizer.count(text, bos=False)

    async def _generate_text(
        self, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        tokens: list[int] | None = None
        if self.tokenizer is not None:
            tokens = list((await self.admit(request)).prompt_tokens or ())
        cache = self.prompt_cache if self._cache_usable else None
        lease = None
        if cache is not None and tokens:
            await self._prepare_shared_prefix(cache, request, tokens)
            # None while the state directory is unusable: run without reuse.
            lease = await asyncio.to_thread(cache.lease, tokens, self._crafter(tokens))
        if cache is None or tokens is None or lease is None:
            async with contextlib.aclosing(self._run(request, request.prompt.encode())) as events:
                async for event in events:
                    yield event
            return
        committed = False
        try:
            stdin = lease.prompt if lease.prompt is not None else request.prompt.encode("utf-8")
            run = _Run(lease=lease, expected_prompt_tokens=len(tokens))
            try:
                # aclosing: a generation closed early stops its process before it returns.
                async with contextlib.aclosing(self._run(request, stdin, run)) as events:
                    async for event in events:
                        if isinstance(event, PromptAccepted):
                            self._cache_strikes = 0
                        if isinstance(event, Finished) and run.clean:
                            committed = await asyncio.to_thread(cache.commit, lease, tokens)
                        yield event
            except _CacheNotHonoured as exc:
                # Nothing was sent yet: run again on the true prompt without the cache.
                # A prompt read otherwise than planned turns reuse off for good; a saved
                # state not read may be a file that went away: only if it happens again.
                self._cache_strikes += 1
                if exc.prompt_differs or self._cache_strikes >= _CACHE_STRIKES:
                    self._cache_usable = False
                    logger.warning("prompt cache turned off: %s", exc)
                else:
                    logger.info("prompt cache not used for one request: %s", exc)
                retry = self._run(request, request.prompt.encode("utf-8"))
                async with contextlib.aclosing(retry) as events:
                    async for event in events:
                        yield event
        finally:
            if not committed:
                with anyio.CancelScope(shield=True):
                    await asyncio.to_thread(cache.discard, lease)

    def _crafter(self, tokens: list[int]) -> Callable[[int], bytes | None]:
        tokenizer = self.tokenizer
        assert tokenizer is not None
        return functools.partial(craft_prompt, tokenizer, tokens)

    async def _prepare_shared_prefix(
        self, cache: PromptCache, request: GenerationRequest, tokens: list[int]
    ) -> None:
        """Save the state of the prompt's shared prefix (system prompt, tools) on its
        second sighting, so that every conversation that starts with it starts from it."""
        prefix = request.shared_prefix
        if not prefix or self.tokenizer is None:
            return
        prefix_tokens = await asyncio.to_thread(self.tokenizer.encode, prefix)
        length = len(prefix_tokens)
        if length < MIN_SHARED_PREFIX or length >= len(tokens) or tokens[:length] != prefix_tokens:
            return
        key = hash(tuple(prefix_tokens))
        sightings = self._prefix_sightings.pop(key, 0) + 1
        self._prefix_sightings[key] = sightings
        while len(self._prefix_sightings) > _MAX_PREFIXES_TRACKED:
            del self._prefix_sightings[next(iter(self._prefix_sightings))]
        if sightings < 2 or await asyncio.to_thread(cache.has, prefix_tokens):
            return
        if await asyncio.to_thread(cache.save_prefix, prefix_tokens):
            logger.debug("prompt cache: saved a shared prefix of %d tokens", length)
            return
        # No saved state covers it: compute it once, on its own (-n 0).
        lease = await asyncio.to_thread(cache.lease, prefix_tokens, self._crafter(prefix_tokens))
        if lease is None:
            return
        committed = False
        try:
            stdin = lease.prompt if lease.prompt is not None else prefix.encode("utf-8")
            prefill = GenerationRequest(prompt=prefix, max_tokens=1, temperature=0.0, top_p=1.0)
            run = _Run(lease=lease, expected_prompt_tokens=length)
            with contextlib.suppress(EngineError, _CacheNotHonoured):
                async for event in self._run(prefill, stdin, run):
                    if isinstance(event, Finished) and run.clean:
                        committed = await asyncio.to_thread(cache.commit, lease, prefix_tokens)
            logger.debug("prompt cache: computed a shared prefix of %d tokens", length)
        finally:
            if not committed:
                with anyio.CancelScope(shield=True):
                    await asyncio.to_thread(cache.discard, lease)

    async def _run(
        self, request: GenerationRequest, stdin: bytes, run: _Run | None = None
    ) -> AsyncGenerator[GenerationEvent, None]:
        """One PicoLM process. With ``run``, it works on ``run.lease``'s KV file and must
        report exactly the expected prompt and reused token counts."""
        started = time.monotonic()
        argv = self.command(request)
        if run is not None:
            argv += ["--cache", str(run.lease.path)]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                **spawn_options(),
            )
        except OSError as exc:
            raise EngineError(f"Could not start PicoLM: {exc.strerror or exc}") from None
        report = _StderrReport()
        stderr_task = asyncio.ensure_future(self._read_stderr(process, report))
        try:
            await self._send_prompt(process, stdin)
            await self._wait_for_prompt(process, report, stderr_task)
            assert report.prompt_tokens is not None
            if run is not None and (
                report.prompt_tokens != run.expected_prompt_tokens
                or report.cached_tokens != run.lease.reused_tokens
            ):
                raise _CacheNotHonoured(
                    f"PicoLM read {report.prompt_tokens} prompt tokens ({report.cached_tokens} "
                    f"from the cache) where {run.expected_prompt_tokens} "
                    f"({run.lease.reused_tokens}) were expected",
                    prompt_differs=report.prompt_tokens != run.expected_prompt_tokens,
                )
            if report.prompt_tokens >= self.context_length:
                raise ContextLengthExceededError.prompt(report.prompt_tokens, self.context_length)
            yield PromptAccepted(report.prompt_tokens, report.cached_tokens)

            budget = self.budget(request)
            trailer = TrailerFilter(self.eos_text)
            # Tokens generated so far, for a reply cut short by a stop string (PicoLM then
            # never prints its count): the reply re-tokenized, as reads can merge tokens.
            counter = self.tokenizer.reply_counter() if self.tokenizer is not None else None
            # PicoLM prints at most budget + 1 tokens (EOS included) and one newline.
            most_bytes = (budget + 1) * self._piece_bytes + 1
            reads = read_bytes = 0
            assert process.stdout is not None
            while data := await process.stdout.read(_READ_SIZE):
                reads += 1
                read_bytes += len(data)
                if read_bytes > most_bytes:
                    logger.warning(
                        "picolm (pid %d) wrote over %d bytes for %d tokens: stopped",
                        process.pid,
                        most_bytes,
                        budget,
                    )
                    raise EngineError(
                        "The PicoLM engine wrote more output than the token budget allows; "
                        "it was stopped."
                    )
                text = trailer.feed(data)
                if text:
                    running = max(counter.feed(text), 1) if counter is not None else reads
                    yield TextDelta(text, min(running, budget))
                # Reads of an engine that floods stdout never wait: give the event loop
                # (time limits, other requests, /health) its turn.
                await asyncio.sleep(0)
            rest, ended_by_eos = trailer.finish()
            await stderr_task
            returncode = await process.wait()
            if returncode != 0:
                raise EngineError(self._exit_message(process.pid, returncode, report))
            if run is not None:
                run.clean = True
            generated = report.generated_tokens if report.generated_tokens is not None else reads
            completion_tokens = min(generated - (1 if ended_by_eos else 0), budget)
            if rest:
                yield TextDelta(rest, completion_tokens)
            hit_limit = (
                completion_tokens >= budget
                or report.prompt_tokens + generated >= self.context_length
            )
            reason: FinishReason = "length" if hit_limit and not ended_by_eos else "stop"
            logger.debug(
                "picolm finished in %.2fs: %d prompt (%d reused), %d completion tokens",
                time.monotonic() - started,
                report.prompt_tokens,
                report.cached_tokens,
                completion_tokens,
            )
            yield Finished(reason, max(completion_tokens, 0))
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop(process, stderr_task)

    async def _send_prompt(self, process: asyncio.subprocess.Process, prompt: bytes) -> None:
        assert process.stdin is not None
        try:
            process.stdin.write(prompt)
            await process.stdin.drain()
            process.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            # PicoLM exited before reading its prompt; its exit status says why.
            pass

    async def _wait_for_prompt(
        self,
        process: asyncio.subprocess.Process,
        report: _StderrReport,
        stderr_task: asyncio.Future[None],
    ) -> None:
        """Wait for the ``Prompt: N tokens`` line, or for PicoLM to end without it."""
        prompt_seen: asyncio.Future[Any] = asyncio.ensure_future(report.prompt_seen.wait())
        waited: set[asyncio.Future[Any]] = {prompt_seen, stderr_task}
        try:
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        finally:
            prompt_seen.cancel()
        if report.prompt_tokens is None:
            returncode = await process.wait()
            raise EngineError(self._exit_message(process.pid, returncode, report))

    @staticmethod
    async def _read_stderr(process: asyncio.subprocess.Process, report: _StderrReport) -> None:
        """Parse stderr line by line; a line is cut at _STDERR_LINE_CHARS (an engine that
        writes one endless line or endless lines costs the server bounded work per read)."""
        assert process.stderr is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        partial = ""
        while data := await process.stderr.read(_READ_SIZE):
            *lines, partial = (partial + decoder.decode(data)).split("\n")
            partial = partial[:_STDERR_LINE_CHARS]
            for line in lines:
                line = line[:_STDERR_LINE_CHARS]
                logger.debug("picolm: %s", line)
                report.add(line)
            await asyncio.sleep(0)
        if partial:
            report.add(partial)

    @staticmethod
    def _exit_message(pid: int, returncode: int, report: _StderrReport) -> str:
        """What the client is told: how the process ended, never what it wrote (stderr
        can hold paths and prompt text); the log gets its last lines."""
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            how = f"was killed by {name}"
        else:
            how = f"exited with status {returncode}"
        logger.warning("picolm (pid %d) %s; its last stderr lines: %s", pid, how, report.tail())
        return f"The PicoLM engine {how}."

    @staticmethod
    async def _stop(process: asyncio.subprocess.Process, stderr_task: asyncio.Future[None]) -> None:
        if process.returncode is None:
            kill_group(process)
        # asyncio's wait() returns only once every pipe has closed, and a stdout pipe whose
        # reading was paused (a full buffer: an engine that flooded it) never reports its
        # end: read what is left, now that nothing writes to it any more.
        if process.stdout is not None:
            with anyio.move_on_after(_DRAIN_SECONDS):
                while await process.stdout.read(_READ_SIZE):
                    pass
        await process.wait()
        stderr_task.cancel()
        await asyncio.gather(stderr_task, return_exceptions=True)
