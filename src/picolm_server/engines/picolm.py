"""The PicoLM engine: one ``picolm`` subprocess per generation.

Follows the engine's contract (see the project docs): the prompt goes on stdin, never on
the command line, where every user of the machine could read it; ``-n N`` generates N+1
tokens, so N-1 is passed; stdout carries the reply followed by the end-of-sequence
token's text and one newline, neither of which is reply text, so the end of the stream is
held back until the process ends; bytes are decoded incrementally because a UTF-8
character can be split across writes; the token counts come from stderr. The process runs
in its own process group and the whole group is killed when the generation is closed
early, so nothing it starts outlives the request.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import logging
import os
import re
import signal
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ..errors import ContextLengthExceededError, EngineError
from ..gguf_metadata import GGUFMetadata
from .base import (
    EngineHealth,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    OutputControl,
    PromptAccepted,
    TextDelta,
)
from .picolm_json import generate_schema_json
from .picolm_tokenizer import PicoLMTokenizer
from .prompt_cache import CacheLease, PromptCache, craft_prompt

logger = logging.getLogger("picolm_server.engine.picolm")

_PROMPT_LINE = re.compile(r"^Prompt: (\d+) tokens")
_CACHED_LINE = re.compile(r"^Skipping (\d+) cached prompt tokens")
_GENERATED_LINE = re.compile(r"^Generation: (\d+) tokens")
_READ_SIZE = 4096
# A shared prefix (system prompt, tools) shorter than this is not worth a state of its own.
MIN_SHARED_PREFIX = 32
_MAX_PREFIXES_TRACKED = 256


@dataclass(frozen=True)
class PicoLMOptions:
    binary: Path
    model_path: Path
    model_id: str
    threads: int
    context_length: int


def context_exceeded(prompt_tokens: int, context_length: int) -> ContextLengthExceededError:
    return ContextLengthExceededError(
        f"This model's maximum context length is {context_length} tokens. However, your "
        f"messages resulted in {prompt_tokens} tokens. Please reduce the length of the "
        "messages.",
        param="messages",
    )


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

    def last_words(self) -> str:
        meaningful = [line for line in self.lines if line.strip() and not line.startswith(" ")]
        return meaningful[-1] if meaningful else "no output on stderr"


class _CacheNotHonoured(Exception):
    """PicoLM did not read the prompt or the saved state the way the server planned."""


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
    longest saved state that is a token prefix of its prompt (see ``prompt_cache``).
    A reply held to a JSON schema is written piece by piece (see ``picolm_json``).
    """

    output_control: OutputControl = "schema"

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
        self._cache_usable = self.prompt_cache is not None
        self._prefix_sightings: dict[int, int] = {}
        self.eos_text = metadata.token_text("eos") or "</s>"
        model_context = metadata.context_length or 2048
        # PicoLM's -c can only lower the model's own context length.
        self.context_length = min(options.context_length, model_context)
        self.model = ModelInfo.of_file(
            options.model_id, options.model_path, self.context_length, "picolm"
        )

    def health(self) -> EngineHealth:
        binary, model = self.options.binary, self.options.model_path
        if not os.access(binary, os.X_OK):
            return EngineHealth(False, f"picolm binary {binary} is missing or not executable")
        if not model.is_file():
            return EngineHealth(False, f"model file {model} is missing")
        return EngineHealth(True, f"picolm ({binary})")

    def command(self, request: GenerationRequest) -> list[str]:
        """The argv for one generation. The prompt is not in it: it goes on stdin."""
        args = [
            str(self.options.binary),
            str(self.options.model_path),
            # PicoLM generates N+1 tokens for -n N.
            "-n", str(max(request.max_tokens - 1, 0)),
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

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        constraint = request.constraint
        if constraint is None or constraint.json_schema is None:
            async with contextlib.aclosing(self._generate_text(request)) as events:
                async for event in events:
                    yield event
            return
        prompt_tokens = None
        if self.tokenizer is not None:
            prompt_tokens = len(await asyncio.to_thread(self.tokenizer.encode, request.prompt))
            if prompt_tokens >= self.context_length:
                raise context_exceeded(prompt_tokens, self.context_length)
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
            tokens = await asyncio.to_thread(self.tokenizer.encode, request.prompt)
            if len(tokens) >= self.context_length:
                raise context_exceeded(len(tokens), self.context_length)
        cache = self.prompt_cache if self._cache_usable else None
        if cache is None or not tokens:
            async with contextlib.aclosing(self._run(request, request.prompt.encode())) as events:
                async for event in events:
                    yield event
            return
        await self._prepare_shared_prefix(cache, request, tokens)
        lease = await asyncio.to_thread(cache.lease, tokens, self._crafter(tokens))
        committed = False
        try:
            stdin = lease.prompt if lease.prompt is not None else request.prompt.encode("utf-8")
            run = _Run(lease=lease, expected_prompt_tokens=len(tokens))
            try:
                # aclosing: a generation closed early stops its process before it returns.
                async with contextlib.aclosing(self._run(request, stdin, run)) as events:
                    async for event in events:
                        if isinstance(event, Finished) and run.clean:
                            committed = await asyncio.to_thread(cache.commit, lease, tokens)
                        yield event
            except _CacheNotHonoured as exc:
                # Nothing was sent yet: run again on the true prompt without the cache.
                self._cache_usable = False
                logger.warning("prompt cache turned off: %s", exc)
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

    def _running_count(self, text: str, reads: int) -> int:
        """Tokens generated so far, for a reply cut short by a stop string (PicoLM then
        never prints its count): the reply re-tokenized, as reads can merge tokens."""
        if self.tokenizer is None:
            return reads
        return max(self.tokenizer.count(text, bos=False), 1)

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
                start_new_session=True,
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
                    f"({run.lease.reused_tokens}) were expected"
                )
            if report.prompt_tokens >= self.context_length:
                raise context_exceeded(report.prompt_tokens, self.context_length)
            yield PromptAccepted(report.prompt_tokens, report.cached_tokens)

            trailer = TrailerFilter(self.eos_text)
            reads = 0
            released = ""
            assert process.stdout is not None
            while data := await process.stdout.read(_READ_SIZE):
                reads += 1
                text = trailer.feed(data)
                if text:
                    released += text
                    running = self._running_count(released, reads)
                    yield TextDelta(text, min(running, request.max_tokens))
            rest, ended_by_eos = trailer.finish()
            await stderr_task
            returncode = await process.wait()
            if returncode != 0:
                raise EngineError(self._exit_message(returncode, report))
            if run is not None:
                run.clean = True
            generated = report.generated_tokens if report.generated_tokens is not None else reads
            completion_tokens = min(generated - (1 if ended_by_eos else 0), request.max_tokens)
            if rest:
                yield TextDelta(rest, completion_tokens)
            hit_limit = (
                completion_tokens >= request.max_tokens
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
            raise EngineError(self._exit_message(returncode, report))

    @staticmethod
    async def _read_stderr(process: asyncio.subprocess.Process, report: _StderrReport) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            logger.debug("picolm: %s", line)
            report.add(line)

    @staticmethod
    def _exit_message(returncode: int, report: _StderrReport) -> str:
        if returncode < 0:
            how = f"was killed by signal {signal.Signals(-returncode).name}"
        else:
            how = f"exited with status {returncode}"
        return f"The PicoLM engine {how}: {report.last_words()}"

    @staticmethod
    async def _stop(process: asyncio.subprocess.Process, stderr_task: asyncio.Future[None]) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        stderr_task.cancel()
        await asyncio.gather(stderr_task, return_exceptions=True)
