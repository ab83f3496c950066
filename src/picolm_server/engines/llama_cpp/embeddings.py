"""Embeddings on llama.cpp: a llama context of its own, in embedding mode.

The generation engine's context is never touched: this module loads the embedding model
(the served GGUF again, whose weights the two contexts then share through the page
cache, or a dedicated embedding GGUF) on first use, on one worker thread of its own.
Requests take turns; one request's inputs are computed one at a time, and a request
that is abandoned (client gone, time limit) stops between two inputs, so embedding work
never holds the CPU for longer than one input beyond its request. Generation keeps its
own thread and context meanwhile: the two share the cores, neither waits for the other.

Causal language models carry no pooling type: their token vectors are averaged here
(mean pooling), and an input is computed in chunks of :data:`CHUNK_TOKENS`, each chunk's
tokens attending to the ones before it through the context's cache, exactly as in one
batch. llama.cpp's own pooling would need the whole input in one batch, and a batch's
buffers grow with its length times the vocabulary (every token's logits are computed):
one 2,048-token input took SmolLM2's process from 275 MB to 1.1 GB, and the pages stayed.
Chunked, the same input adds about 60 MB. Embedding models (``{arch}.pooling_type`` in
the GGUF) keep their own pooling, in one batch (they are not causal, and have no
vocabulary-sized output). Vectors are L2-normalised, as OpenAI's are, and rounded to
float32, the precision they have (so that ``encoding_format`` float and base64 carry the
same numbers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from ...errors import (
    APIError,
    ContextLengthExceededError,
    EngineError,
    InvalidRequestError,
    QueueFullError,
)
from ...gguf import GGUFMetadata
from ..base import EmbeddingInput, Embeddings

logger = logging.getLogger("picolm_server.engine.llama_embeddings")

# OpenAI's bound on the tokens of one request, all inputs together.
MAX_REQUEST_TOKENS = 300_000
# llama.cpp's pooling types (llama.h: NONE 0, MEAN 1, CLS 2, LAST 3).
_POOLING_NONE = 0
_POOLING_MEAN = 1
_POOLINGS_KEPT = frozenset({1, 2, 3})
# Tokens per batch when a causal model is mean-pooled here (module doc).
CHUNK_TOKENS = 256


@dataclass(frozen=True)
class LlamaEmbeddingOptions:
    model_path: Path
    # Tokens one input may hold: the context (and batch) of the embedding context.
    context_length: int
    threads: int
    pooling_type: int = _POOLING_MEAN
    # Requests that may wait for the one running (more are refused with a 429).
    max_waiting: int = 16
    # A causal model without pooling of its own: mean-pooled here, in chunks.
    pooled_here: bool = True

    @classmethod
    def for_model(
        cls,
        model_path: Path,
        metadata: GGUFMetadata,
        *,
        context_length: int,
        threads: int,
        max_waiting: int = 16,
    ) -> LlamaEmbeddingOptions:
        """Options for a model file: its pooling type if it has one (else mean), a context
        no larger than it was trained for."""
        pooling = metadata.values.get(f"{metadata.architecture}.pooling_type")
        trained = metadata.context_length or context_length
        own = pooling if pooling in _POOLINGS_KEPT else None
        return cls(
            model_path=model_path,
            context_length=max(min(context_length, trained), 8),
            threads=threads,
            pooling_type=int(own) if own is not None else _POOLING_MEAN,
            max_waiting=max_waiting,
            pooled_here=own is None,
        )


def l2_normalised(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to unit length (as OpenAI's embeddings are); zero stays zero."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if norm == 0.0 or not math.isfinite(norm):
        return [float(x) for x in vector]
    return [x / norm for x in vector]


def as_float32(vector: Sequence[float]) -> tuple[float, ...]:
    """Each value rounded to the nearest float32 (the precision embeddings have)."""
    packed = struct.pack(f"<{len(vector)}f", *vector)
    return struct.unpack(f"<{len(vector)}f", packed)


class _Abandoned(Exception):
    """The request went away: the worker stops between two inputs."""


class LlamaEmbedder:
    """The embedding model, loaded on the first request."""

    def __init__(self, options: LlamaEmbeddingOptions) -> None:
        self.options = options
        self._llama: Any = None
        # The thread of the request being embedded, if any.
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._turn = asyncio.Lock()
        self._waiting = 0

    async def embed(
        self, inputs: Sequence[EmbeddingInput], *, truncate: bool = False
    ) -> Embeddings:
        if self._waiting >= self.options.max_waiting + 1:
            raise QueueFullError(
                "Too many embedding requests are waiting; retry later.",
                headers={"Retry-After": "1"},
            )
        self._waiting += 1
        try:
            async with self._turn:
                return await self._run(inputs, truncate)
        finally:
            self._waiting -= 1

    async def _run(self, inputs: Sequence[EmbeddingInput], truncate: bool) -> Embeddings:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        # A thread of the request's own, ended after it: llama.cpp's OpenMP keeps worker
        # threads for every thread that has decoded while that thread lives, and more of
        # them than cores slow every decode in the process (llama_slots,
        # THREAD_REST_SECONDS), the generation engine's included.
        worker = self._worker = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="llama-embed"
        )
        work = loop.run_in_executor(worker, self._embed_all, list(inputs), truncate, stop)
        try:
            return await work
        except APIError:
            raise
        except Exception as exc:  # one request fails, never the server
            logger.error("llama.cpp embedding failed: %r", exc)
            raise EngineError(f"The embedding engine failed ({type(exc).__name__}).") from exc
        finally:
            # Abandoned (cancelled): the worker stops after its current input, and the
            # next request only starts once it has.
            stop.set()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(work, return_exceptions=True)
                # Its thread (and OpenMP's workers with it) gone before the next one.
                await asyncio.to_thread(worker.shutdown, True)
            self._worker = None

    # ---- the worker thread ----

    def _load(self) -> Any:
        if self._llama is None:
            import llama_cpp

            size = self.options.context_length
            # A non-causal model needs all of an input in one batch; a causal one is
            # computed in chunks and pooled here (module doc).
            batch = min(size, CHUNK_TOKENS) if self.options.pooled_here else size
            try:
                self._llama = llama_cpp.Llama(
                    model_path=str(self.options.model_path),
                    embedding=True,
                    pooling_type=(
                        _POOLING_NONE if self.options.pooled_here else self.options.pooling_type
                    ),
                    n_ctx=size,
                    n_batch=batch,
                    n_ubatch=batch,
                    n_threads=self.options.threads,
                    n_threads_batch=self.options.threads,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise EngineError(
                    f"The embedding model could not be loaded ({type(exc).__name__})."
                ) from exc
        return self._llama

    def _tokens(
        self, llama: Any, inputs: list[EmbeddingInput], truncate: bool = False
    ) -> list[list[int]]:
        vocab_size = int(llama.n_vocab())
        limit = int(llama.n_ctx())
        token_lists: list[list[int]] = []
        total = 0
        for index, item in enumerate(inputs):
            param = f"input[{index}]" if len(inputs) > 1 else "input"
            if isinstance(item, str):
                tokens = list(llama.tokenize(item.encode("utf-8"), add_bos=True, special=False))
            else:
                tokens = list(item)
                for position, token in enumerate(tokens):
                    if not 0 <= token < vocab_size:
                        raise InvalidRequestError(
                            f"Invalid token id {token} at {param}[{position}]: this model's "
                            f"token ids run from 0 to {vocab_size - 1}.",
                            param=param,
                            code="invalid_value",
                        )
            if len(tokens) > limit and truncate:
                tokens = tokens[:limit]
            elif len(tokens) > limit:
                raise ContextLengthExceededError(
                    f"{param} is {len(tokens)} tokens long; this embedding model takes at "
                    f"most {limit} tokens per input.",
                    param=param,
                )
            total += len(tokens)
            if total > MAX_REQUEST_TOKENS:
                raise InvalidRequestError(
                    f"The inputs hold more than {MAX_REQUEST_TOKENS} tokens together, the "
                    "most one request may hold.",
                    param="input",
                    code="invalid_value",
                )
            token_lists.append(tokens)
        return token_lists

    def _embed_all(
        self, inputs: list[EmbeddingInput], truncate: bool, stop: threading.Event
    ) -> Embeddings:
        llama = self._load()
        token_lists = self._tokens(llama, inputs, truncate)
        size = int(llama.n_embd())
        vectors: list[tuple[float, ...]] = []
        for tokens in token_lists:
            if stop.is_set():
                raise _Abandoned
            if not tokens:  # a text of no tokens (e.g. no BOS and only ignored bytes)
                vectors.append((0.0,) * size)
                continue
            llama._ctx.kv_cache_clear()
            if self.options.pooled_here:
                pooled = self._mean_of_chunks(llama, tokens, size)
            else:
                pooled = self._pooled_by_llama(llama, tokens, size)
            vectors.append(as_float32(l2_normalised(pooled)))
        llama._ctx.kv_cache_clear()
        return Embeddings(tuple(vectors), sum(len(tokens) for tokens in token_lists))

    @staticmethod
    def _pooled_by_llama(llama: Any, tokens: list[int], size: int) -> list[float]:
        import llama_cpp

        batch = llama._batch
        batch.reset()
        batch.add_sequence(tokens, 0, True)
        llama._ctx.decode(batch)
        pooled = llama_cpp.llama_get_embeddings_seq(llama._ctx.ctx, 0)
        if not pooled:
            raise EngineError("llama.cpp returned no embedding for an input.")
        return list(pooled[:size])

    @staticmethod
    def _mean_of_chunks(llama: Any, tokens: list[int], size: int) -> list[float]:
        """The mean of every token's vector, the input computed a chunk at a time."""
        import llama_cpp
        import numpy

        total = numpy.zeros(size, dtype=numpy.float64)
        batch = llama._batch
        for start in range(0, len(tokens), CHUNK_TOKENS):
            chunk = tokens[start : start + CHUNK_TOKENS]
            batch.reset()
            raw = batch.batch
            raw.n_tokens = len(chunk)
            for index, token in enumerate(chunk):
                raw.token[index] = token
                raw.pos[index] = start + index  # after the chunks before it
                raw.seq_id[index][0] = 0
                raw.n_seq_id[index] = 1
                raw.logits[index] = True  # every token's vector is an output
            llama._ctx.decode(batch)
            pointer = llama_cpp.llama_get_embeddings(llama._ctx.ctx)
            if not pointer:
                raise EngineError("llama.cpp returned no embeddings for an input.")
            total += numpy.ctypeslib.as_array(pointer, shape=(len(chunk), size)).sum(axis=0)
        return [float(x) for x in total / len(tokens)]

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        if self._llama is not None:
            self._llama.close()
