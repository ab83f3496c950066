"""The llama.cpp engine: a GGUF model loaded in-process through ``llama-cpp-python``.

Generation runs on one worker thread per loaded model (llama.cpp contexts are not
thread-safe, and one generation already uses every core), handing each token to the
event loop as it is sampled. Closing the generation sets a flag the worker checks
between tokens, and waits for the worker to stop before the model is free again.
Every prompt is computed from scratch: llama.cpp can keep the previous prompt's state,
but logits computed on a reused prefix differ in the last bits from those of a whole
prompt (its matrix kernels depend on the batch shape), which is enough to change a greedy
reply. Identical requests must give identical replies (streamed or not, first or second),
and a small model's prefill is cheap, so reuse is not worth that.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from ..errors import EmbeddingsUnsupportedError, EngineError, InvalidRequestError
from ..prompt_tokens import SplitPrompt, llama_prompt_tokenizer, prompt_token_ids
from .base import (
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
)
from .picolm import context_exceeded

logger = logging.getLogger("picolm_server.engine.llama_cpp")


@dataclass(frozen=True)
class LlamaCppOptions:
    model_path: Path
    model_id: str
    context_length: int
    threads: int


_END = object()


class LlamaCppEngine:
    def __init__(self, options: LlamaCppOptions) -> None:
        import llama_cpp  # the optional extra; the factory checks it is installed

        self._llama_cpp = llama_cpp
        self.options = options
        self.llama = llama_cpp.Llama(
            model_path=str(options.model_path),
            n_ctx=options.context_length,
            n_threads=options.threads,
            n_threads_batch=options.threads,
            n_batch=512,
            verbose=False,
        )
        vocab = self.llama._model.vocab
        fim = tuple(
            int(find(vocab))
            for find in (
                llama_cpp.llama_vocab_fim_pre,
                llama_cpp.llama_vocab_fim_suf,
                llama_cpp.llama_vocab_fim_mid,
            )
        )
        # Generation can be held to a GBNF grammar (see OutputConstraint.gbnf); the prompt
        # goes to llama_tokenize with its length, so a NUL is a character like any.
        self.abilities = EngineAbilities(
            output_control="grammar",
            prompt_accepts_nul=True,
            top_k=True,
            tokenize=True,
            fim_tokens=(fim[0], fim[1], fim[2]) if min(fim) >= 0 else None,
        )
        # Marker text becomes a control token only where the chat template wrote it.
        self._prompt_tokenizer = llama_prompt_tokenizer(self.llama)
        # n_ctx 0 means "the model's own"; report what was actually allocated.
        self.context_length = int(self.llama.n_ctx())
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llama")
        # Prompts are tokenized before they wait for the model, one at a time (llama.cpp's
        # tokenizer only reads the vocabulary, so it runs beside a generation).
        self._tokenizer_thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="llama-tokenize"
        )
        self._lock = asyncio.Lock()
        self.model = ModelInfo.of_file(
            options.model_id, options.model_path, self.context_length, "llama.cpp"
        )

    def health(self) -> EngineHealth:
        return EngineHealth(True, f"llama.cpp in-process ({self.options.model_path.name})")

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        tokens: list[int] = self.llama.tokenize(
            text.encode("utf-8"), add_bos=add_special, special=parse_special
        )
        return tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        vocabulary = int(self.llama.n_vocab())
        for token in tokens:
            if not 0 <= token < vocabulary:
                raise InvalidRequestError(
                    f"Token id {token} is not in the model's vocabulary (0 to {vocabulary - 1}).",
                    param="tokens",
                )
        text: bytes = self.llama.detokenize(list(tokens), special=True)
        return text.decode("utf-8", errors="replace")

    def token_piece(self, token: int) -> bytes:
        self.detokenize([token])  # the vocabulary check
        piece: bytes = self.llama.detokenize([token], special=True)
        return piece

    def vocabulary_size(self) -> int:
        return int(self.llama.n_vocab())

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self.prompt_tokens(request))

    async def embed(self, inputs: Sequence[EmbeddingInput]) -> Embeddings:
        raise EmbeddingsUnsupportedError("llama.cpp")

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        split = request.split_prompt or SplitPrompt.unsplit(request.prompt)
        return prompt_token_ids(split, self._prompt_tokenizer)

    async def admit(self, request: GenerationRequest) -> GenerationRequest:
        if request.prompt_tokens is not None:
            return request
        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(self._tokenizer_thread, self.prompt_tokens, request)
        if len(tokens) >= self.context_length:
            raise context_exceeded(len(tokens), self.context_length)
        return replace(request, prompt_tokens=tuple(tokens))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        tokens = list((await self.admit(request)).prompt_tokens or ())
        async with self._lock:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._worker, self.llama.reset)
            yield PromptAccepted(len(tokens))

            # Room left in the context bounds the reply as well as max_tokens does.
            budget = min(request.max_tokens, self.context_length - len(tokens))
            queue: asyncio.Queue[Any] = asyncio.Queue()
            stop = threading.Event()
            work = loop.run_in_executor(
                self._worker, self._run, tokens, request, budget, queue, stop, loop
            )
            try:
                count = 0
                while True:
                    item = await queue.get()
                    if item is _END:
                        break
                    if isinstance(item, BaseException):
                        # Its text can hold paths or prompt text: for the log only.
                        logger.error("llama.cpp generation failed: %r", item)
                        raise EngineError(
                            f"The llama.cpp engine failed ({type(item).__name__})."
                        ) from item
                    text, count = item
                    yield TextDelta(text, count)
                reason, count = await work
                yield Finished(reason, count)
            finally:
                stop.set()
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(work, return_exceptions=True)

    def _run(
        self,
        tokens: list[int],
        request: GenerationRequest,
        budget: int,
        queue: asyncio.Queue[Any],
        stop: threading.Event,
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[FinishReason, int]:
        """The worker thread: sample tokens until EOS, the budget, or ``stop``."""
        put = queue.put_nowait
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = self.llama._model.vocab
        is_end_of_generation = self._llama_cpp.llama_vocab_is_eog
        count = 0
        reason: FinishReason = "length"
        started = time.monotonic()
        stopped = False
        try:
            if request.seed is not None:
                self.llama.set_seed(request.seed)
            grammar = self._grammar(request)
            for token in self.llama.generate(
                tokens,
                top_k=request.top_k,
                top_p=request.top_p,
                min_p=0.0,
                temp=request.temperature,
                repeat_penalty=1.0,
                grammar=grammar,
            ):
                if stop.is_set():
                    stopped = True
                    break
                if is_end_of_generation(vocab, token):
                    reason = "stop"
                    break
                count += 1
                text = decoder.decode(self.llama.detokenize([token]))
                if text:
                    loop.call_soon_threadsafe(put, (text, count))
                if count >= budget:
                    break
            tail = decoder.decode(b"", final=True)
            if tail:
                loop.call_soon_threadsafe(put, (tail, count))
        except Exception as exc:  # reported to the request, never to the server
            loop.call_soon_threadsafe(put, exc)
        finally:
            loop.call_soon_threadsafe(put, _END)
        logger.debug(
            "llama.cpp %s in %.2fs: %d prompt, %d completion tokens (budget %d)",
            "stopped by the server" if stopped else f"finished ({reason})",
            time.monotonic() - started,
            len(tokens),
            count,
            budget,
        )
        return reason, count

    def grammar_error(self, gbnf: str) -> str | None:
        """Why llama.cpp would refuse this grammar, or None if it parses.

        llama-cpp-python hands a grammar that does not parse to the sampler chain as a
        null sampler, which crashes the process: grammars are checked before use."""
        sampler = self._llama_cpp.llama_sampler_init_grammar(
            self.llama._model.vocab, gbnf.encode("utf-8"), b"root"
        )
        if not sampler:
            return "llama.cpp could not parse the grammar"
        self._llama_cpp.llama_sampler_free(sampler)
        return None

    def _grammar(self, request: GenerationRequest) -> Any:
        constraint = request.constraint
        if constraint is None:
            return None
        grammar_class: Any = self._llama_cpp.LlamaGrammar  # type: ignore[attr-defined]
        if constraint.gbnf is not None:
            problem = self.grammar_error(constraint.gbnf)
            if problem is not None:
                raise ValueError(problem)
            return grammar_class.from_string(constraint.gbnf, verbose=False)
        schema = constraint.json_schema
        if schema is None:
            schema = {"type": "object"}
        return grammar_class.from_json_schema(json.dumps(schema), verbose=False)

    def close(self) -> None:
        self._tokenizer_thread.shutdown(wait=True)
        self._worker.shutdown(wait=True)
        self.llama.close()
