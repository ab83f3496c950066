"""The llama.cpp engine: a GGUF model loaded in-process through ``llama-cpp-python``,
serving concurrent requests from one decode loop (:mod:`.llama_slots`).

This module is the engine's face to the server: it loads the model, tokenizes prompts
(before they wait for a slot), builds each request's sampler (off the event loop, with
a copy of its grammar, which llama.cpp parses once per grammar text: see
:class:`~.llama_sampling.GrammarCache`) and hands the request to the loop, then turns
what the loop delivers into engine events. Closing a generation cancels its job and
waits until the loop has let go of it. Which prompt states are reused, and why replies
stay identical, is the loop's business (see :mod:`.llama_slots`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anyio

from ...errors import (
    ContextLengthExceededError,
    EmbeddingsUnsupportedError,
    EngineError,
    InvalidRequestError,
)
from ...heap import trim
from ...prompting.tokens import (
    SplitPrompt,
    llama_prompt_tokenizer,
    plain_text_bytes,
    prompt_token_ids,
)
from ..base import (
    EmbeddingInput,
    Embeddings,
    EngineAbilities,
    EngineHealth,
    Finished,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    PromptAccepted,
    TextDelta,
)
from ..saved_states import file_identity
from ..state_dir import StateDirRefused
from .cpu_load import CpuLoad
from .embeddings import LlamaEmbedder
from .guidance import GuidanceGrammars, guidance_available
from .loop_wakeup import LoopWakeups
from .sampling import GrammarCache, GrammarError, RequestSampler, SamplingSettings
from .slots import JOB_RELEASED, DecodeLoop, Job, ModelContext, deliver_to
from .state_cache import StateCache, as_tokens
from .state_store import StateStore
from .vocab import TokenFloor, tokenize_capped

logger = logging.getLogger("picolm_server.engine.llama_cpp")

# Tokens per decode step: prompt chunks of waiting requests fill it up to this.
BATCH_TOKENS = 512


@dataclass(frozen=True)
class LlamaCppOptions:
    model_path: Path
    model_id: str
    # Per request (each slot has this much context of its own).
    context_length: int
    threads: int
    # Requests decoded together, one batch per step.
    slots: int = 1
    # Keep computed prompt states for the requests that come next.
    prompt_reuse: bool = True
    # Host memory for states of slots about to be overwritten (0: none kept there), and
    # again the bound of the states kept on disk.
    cache_max_bytes: int = 256 * 1024 * 1024
    # The private state directory (state_dir.py): states are written there (in a folder
    # of this model's) when the engine closes, and found there when an engine of the same
    # model file opens. None: states live as long as the engine.
    state_dir: Path | None = None
    # Faster attention on long contexts, but replies then depend in their last bits on
    # reuse and batching (see llama_slots).
    flash_attention: bool = False
    # Replies that never depend on the requests decoded beside them (slower).
    deterministic: bool = False
    # While idle, compute an ended reply again as prompt, so that the next turn starts
    # after it (see llama_slots, "idle work").
    warm_replies: bool = True
    # Grammar-bound replies: the text the grammar fixes is written, not generated
    # (llguidance runs the grammar; see llama_guidance). Off: llama.cpp's grammar.
    jump_forward: bool = True


class LlamaCppEngine:
    def __init__(self, options: LlamaCppOptions, embedder: LlamaEmbedder | None = None) -> None:
        import llama_cpp  # the optional extra; the factory checks it is installed
        from llama_cpp._internals import LlamaModel
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's own log: errors only
        self._llama_cpp = llama_cpp
        self.options = options
        self.llama = LlamaModel(
            path_model=str(options.model_path),
            params=llama_cpp.llama_model_default_params(),
            verbose=False,
        )
        vocab = self.llama.vocab
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = options.context_length * options.slots
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = options.slots
        params.kv_unified = False  # each slot's cells its own (see llama_slots)
        params.n_threads = params.n_threads_batch = options.threads
        params.no_perf = True
        # Flash attention's CPU kernel gives a row other last bits depending on how its
        # prompt was cut into batches: reused states would then change replies.
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
            if options.flash_attention
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self._context = llama_cpp.llama_init_from_model(self.llama.model, params)
        if not self._context:
            self.llama.close()  # type: ignore[no-untyped-call]
            raise ValueError("llama.cpp could not create a context for the model")
        # llama.cpp may round the context up; each slot gets its share.
        self.context_length = min(
            options.context_length, int(llama_cpp.llama_n_ctx_seq(self._context))
        )
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
            prompt_reuse=options.prompt_reuse,
            parallel=options.slots,
            fim_tokens=(fim[0], fim[1], fim[2]) if min(fim) >= 0 else None,
            # A context of its own, in embedding mode (llama_embeddings.py).
            embeddings=embedder is not None,
        )
        self._embedder = embedder
        # Marker text becomes a control token only where the chat template wrote it.
        self._prompt_tokenizer = llama_prompt_tokenizer(self.llama)
        # How short a prompt's token count can be, from its length alone.
        self._token_floor = TokenFloor(vocab)
        self._vocabulary_size = int(self.llama.n_vocab())
        # Each grammar parsed once: checked before the prompt is built, then copied into
        # the sampler of every request that uses it.
        self._grammars = GrammarCache(vocab)
        # With jump-forward, the grammars llguidance runs (llama.cpp's for the others).
        self._guidance = (
            GuidanceGrammars(vocab, self._vocabulary_size)
            if options.jump_forward and guidance_available()
            else None
        )
        # How the decode thread hands each request's events to its event loop.
        self._wakeups = LoopWakeups()
        # Prompts are tokenized (and samplers built) before they wait for the model, one
        # at a time (this only reads the vocabulary, so it runs beside the decode loop).
        self._tokenizer_thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="llama-tokenize"
        )
        cache = StateCache(options.cache_max_bytes) if options.cache_max_bytes > 0 else None
        store = self._state_store(options) if cache is not None else None
        model_context = ModelContext(self._context, vocab, BATCH_TOKENS)
        self.decode_loop = DecodeLoop(
            model_context,
            slots=options.slots,
            context_length=self.context_length,
            reuse=options.prompt_reuse,
            cache=cache,
            threads=options.threads,
            cpu_load=CpuLoad(),
            deterministic=options.deterministic,
            store=store,
            warm_replies=options.warm_replies,
            warm_up=True,
        )
        self.model = ModelInfo.of_file(
            options.model_id, options.model_path, self.context_length, "llama.cpp"
        )
        self._closed = False

    def _state_store(self, options: LlamaCppOptions) -> StateStore | None:
        """The states earlier engines of this model saved, and where this one's go; None
        when there is no state directory or it cannot be used (reuse in memory goes on)."""
        if options.state_dir is None or not options.prompt_reuse:
            return None
        # States computed with flash attention have other last bits (see llama_slots).
        compatibility = f"llama.cpp {self._llama_cpp.__version__}|flash {options.flash_attention}"
        try:
            store = StateStore(
                options.state_dir,
                model_identity=f"llama.cpp|{file_identity(options.model_path)}",
                compatibility=compatibility,
                max_bytes=options.cache_max_bytes,
                # What an idle slot keeps at most (see llama_slots._leave_room).
                max_tokens=self.context_length - 2,
            )
        except (StateDirRefused, OSError) as exc:
            logger.warning("llama.cpp: prompt states are not kept on disk: %s", exc)
            return None
        logger.info(
            "llama.cpp: prompt states on disk in %s (%d found, budget %d bytes)",
            store.directory,
            len(store),
            options.cache_max_bytes,
        )
        return store

    def health(self) -> EngineHealth:
        return EngineHealth(True, f"llama.cpp in-process ({self.options.model_path.name})")

    def tokenize(
        self, text: str, *, add_special: bool, parse_special: bool, limit: int | None = None
    ) -> list[int]:
        return tokenize_capped(
            self.llama.vocab,
            text.encode("utf-8"),
            add_bos=add_special,
            special=parse_special,
            limit=limit,
        )

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

    async def embed(
        self, inputs: Sequence[EmbeddingInput], *, truncate: bool = False
    ) -> Embeddings:
        if self._embedder is None:
            raise EmbeddingsUnsupportedError("llama.cpp")
        return await self._embedder.embed(inputs, truncate=truncate)

    def _min_prompt_tokens(self, request: GenerationRequest) -> int:
        """The fewest tokens the prompt can be, from its length (llama_vocab.py). Only
        a prompt of at least a byte per context token can be refused that way, so the
        vocabulary is only read for one."""
        split = request.split_prompt or SplitPrompt.unsplit(request.prompt)
        plain = plain_text_bytes(split, self._prompt_tokenizer)
        if plain < self.context_length:
            return 0
        return len(self._prompt_tokenizer.prefix) + self._token_floor.min_tokens(plain)

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        split = request.split_prompt or SplitPrompt.unsplit(request.prompt)
        return prompt_token_ids(split, self._prompt_tokenizer)

    async def admit(self, request: GenerationRequest) -> GenerationRequest:
        if request.prompt_tokens is not None:
            return request
        loop = asyncio.get_running_loop()
        floor = await loop.run_in_executor(self._tokenizer_thread, self._min_prompt_tokens, request)
        if floor >= self.context_length:
            raise ContextLengthExceededError.prompt(floor, self.context_length, at_least=True)
        tokens = await loop.run_in_executor(self._tokenizer_thread, self.prompt_tokens, request)
        if len(tokens) >= self.context_length:
            raise ContextLengthExceededError.prompt(len(tokens), self.context_length)
        return replace(request, prompt_tokens=tuple(tokens))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        request = await self.admit(request)
        tokens = request.prompt_tokens or ()
        loop = asyncio.get_running_loop()
        try:
            sampler = await loop.run_in_executor(self._tokenizer_thread, self._sampler, request)
        except GrammarError as exc:
            raise EngineError(f"The llama.cpp engine could not use the grammar ({exc}).") from exc
        queue: asyncio.Queue[object] = asyncio.Queue()
        job = Job(
            prompt=as_tokens(tokens),
            # Room left in the context bounds the reply as well as max_tokens does.
            budget=max(1, min(request.max_tokens, self.context_length - len(tokens))),
            sampler=sampler,
            deliver=deliver_to(self._wakeups.of(loop), queue),
        )
        self.decode_loop.submit(job)
        released = False
        try:
            while True:
                item = await queue.get()
                if item is JOB_RELEASED:
                    released = True
                    raise EngineError("The llama.cpp engine ended the generation unfinished.")
                if isinstance(item, BaseException):
                    # Its text can hold paths or prompt text: for the log only.
                    logger.error("llama.cpp generation failed: %r", item)
                    raise EngineError(
                        f"The llama.cpp engine failed ({type(item).__name__})."
                    ) from item
                if not isinstance(item, (PromptAccepted, TextDelta, Finished)):
                    raise EngineError("The llama.cpp engine sent an unknown event.")
                yield item
                if isinstance(item, Finished):
                    break
        finally:
            if not released:
                self.decode_loop.cancel(job)
                with anyio.CancelScope(shield=True):
                    while await queue.get() is not JOB_RELEASED:
                        pass

    def _sampler(self, request: GenerationRequest) -> RequestSampler:
        settings = SamplingSettings(
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            seed=request.seed,
        )
        gbnf = self._gbnf(request)
        if gbnf is None:
            return RequestSampler(settings, self._vocabulary_size)
        guided = self._guidance.grammar(gbnf) if self._guidance is not None else None
        if guided is not None:
            return RequestSampler(settings, self._vocabulary_size, guided=guided)
        return RequestSampler(settings, self._vocabulary_size, self._grammars.sampler(gbnf))

    def grammar_error(self, gbnf: str) -> str | None:
        """Why llama.cpp would refuse this grammar, or None if it parses (the parsed
        grammar is kept for the request's sampler)."""
        return self._grammars.error(gbnf)

    def _gbnf(self, request: GenerationRequest) -> str | None:
        """The request's grammar (None without a constraint)."""
        constraint = request.constraint
        if constraint is None:
            return None
        if constraint.gbnf is not None:
            return constraint.gbnf
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        gbnf: str = json_schema_to_gbnf(json.dumps(constraint.json_schema or {"type": "object"}))
        return gbnf

    def close(self) -> None:
        """Stop the engine and free the model. Blocks (joins the decode loop, writes the
        prompt states to the state directory, at most the store's ``save_seconds``): call
        it off the event loop (``await asyncio.to_thread(engine.close)``)."""
        # Once: a second llama_free of the same context would abort the process.
        if self._closed:
            return
        self._closed = True
        if self._embedder is not None:
            self._embedder.close()
        self._tokenizer_thread.shutdown(wait=True)
        self.decode_loop.close()
        self._wakeups.close()
        self.decode_loop.model.close()
        self._grammars.close()
        self._llama_cpp.llama_free(self._context)
        self.llama.close()  # type: ignore[no-untyped-call]
        # The model's vocabulary, metadata and buffers below glibc's mmap threshold were
        # freed into the heap, which keeps them: without this a server that loads and
        # unloads models holds 25 to 40 MB more than after its first unload
        # (bench/model_unload_leak.py), and an idle unload would show no drop.
        trim()
