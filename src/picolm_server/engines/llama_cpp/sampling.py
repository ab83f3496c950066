"""Token sampling for one llama.cpp request: its sampler chain, its grammar checked
sample-first, and the parsed grammars requests share.

Applying a grammar to the whole vocabulary at every token costs far more than decoding
a small model's token (SmolLM2 has 49,152 tokens and a JSON grammar has many states).
So, as llama.cpp's own server does, the chain (top-k, top-p, temperature, the seeded
draw or the greedy pick) samples from the raw logits first, and only the sampled token
is checked against the grammar. Only when the grammar rejects it are the logits masked
by the grammar over the whole vocabulary and the chain run again. Replies still follow
the grammar exactly: every accepted token has been checked.

A greedy request skips even that: its pick is the highest logit the grammar accepts, so
the best :data:`GREEDY_CANDIDATES` tokens are checked one by one, best first (ties to
the lower id, as llama.cpp's greedy sampler breaks them), and the whole vocabulary is
masked only when the grammar accepts none of them. Masking the vocabulary costs about
10 ms here (SmolLM2's 49,152 tokens); a forced tool call meets it a few times.

With jump-forward (:mod:`.guidance`) the grammar is llguidance's instead of llama.cpp's,
checked and masked the same way; it also names the tokens the grammar forces next
(:meth:`RequestSampler.forced_tokens`).
"""

from __future__ import annotations

import ctypes
import math
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np

from .guidance import GuidedGrammar

# llama_token_data is {int32 id; float logit; float p}: 12 bytes, no padding.
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])

# How many of the best tokens a greedy request checks against its grammar before it
# masks the whole vocabulary.
GREEDY_CANDIDATES = 64


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float
    top_p: float
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None


class GrammarError(ValueError):
    """llama.cpp could not parse the grammar."""


def grammar_sampler(vocab: Any, gbnf: str) -> Any:
    """A grammar sampler, or GrammarError. (llama.cpp returns NULL for a grammar it
    cannot parse; handing that to a chain would crash the process.)"""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        raise GrammarError("llama.cpp could not parse the grammar")
    return sampler


# Parsed grammars kept (by GBNF text): the schemas of an application's requests repeat.
GRAMMAR_CACHE_SIZE = 32


class GrammarCache:
    """Grammars parsed once by llama.cpp, each request getting a copy of its own.

    A grammar is checked on the event loop (:meth:`error`, before the prompt is built)
    and then needed again for the request's sampler (:meth:`sampler`); and the same
    schema comes back request after request. Parsing costs in proportion to the grammar
    (18 ms for the 200,000-character grammar of 20 strings of up to 1,000 characters),
    copying a parsed one a few percent of that (``llama_sampler_clone`` copies the rules
    and the parser's starting state, so the copy accepts exactly what a fresh parse
    would). The parsed originals are never sampled with: only their copies are.
    Failures are kept too, so a grammar llama.cpp refuses is refused the same way every
    time without parsing it again. Thread-safe (the event loop and the tokenizer
    thread both use it); ``close`` frees what it holds."""

    def __init__(self, vocab: Any, size: int = GRAMMAR_CACHE_SIZE) -> None:
        self._vocab = vocab
        self._size = size
        self._lock = threading.Lock()
        # GBNF text -> the parsed grammar sampler, or the GrammarError it gave.
        self._parsed: OrderedDict[str, Any] = OrderedDict()

    def error(self, gbnf: str) -> str | None:
        """Why llama.cpp refuses the grammar, or None if it parses."""
        with self._lock:
            parsed = self._lookup(gbnf)
        return str(parsed) if isinstance(parsed, GrammarError) else None

    def sampler(self, gbnf: str) -> Any:
        """A grammar sampler of the request's own (the caller frees it), or GrammarError."""
        with self._lock:
            parsed = self._lookup(gbnf)
            if isinstance(parsed, GrammarError):
                raise parsed
            copy = llama_cpp.llama_sampler_clone(parsed)
        if not copy:
            raise GrammarError("llama.cpp could not copy the grammar")
        return copy

    def _lookup(self, gbnf: str) -> Any:
        parsed = self._parsed.get(gbnf)
        if parsed is not None:
            self._parsed.move_to_end(gbnf)
            return parsed
        try:
            parsed = grammar_sampler(self._vocab, gbnf)
        except GrammarError as exc:
            parsed = exc
        self._parsed[gbnf] = parsed
        while len(self._parsed) > self._size:
            _, evicted = self._parsed.popitem(last=False)
            _free(evicted)
        return parsed

    def close(self) -> None:
        with self._lock:
            for parsed in self._parsed.values():
                _free(parsed)
            self._parsed.clear()


def _free(parsed: Any) -> None:
    if not isinstance(parsed, GrammarError):
        llama_cpp.llama_sampler_free(parsed)


class RequestSampler:
    """The sampler chain of one request, with its optional grammar. Not thread-safe:
    used by the decode loop's thread only. ``close`` frees the native samplers."""

    def __init__(
        self,
        settings: SamplingSettings,
        vocabulary_size: int,
        grammar: Any = None,
        guided: GuidedGrammar | None = None,
    ) -> None:
        self._vocabulary_size = vocabulary_size
        self._greedy = settings.temperature <= 0.0
        self._chain = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        add = llama_cpp.llama_sampler_chain_add
        if self._greedy:
            add(self._chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if settings.top_k > 0:
                add(self._chain, llama_cpp.llama_sampler_init_top_k(settings.top_k))
            if settings.top_p < 1.0:
                add(self._chain, llama_cpp.llama_sampler_init_top_p(settings.top_p, 1))
            add(self._chain, llama_cpp.llama_sampler_init_temp(settings.temperature))
            seed = settings.seed if settings.seed is not None else secrets.randbits(32)
            # LLAMA_DEFAULT_SEED (2^32 - 1) would mean "draw a random seed" to llama.cpp.
            seed %= llama_cpp.LLAMA_DEFAULT_SEED
            add(self._chain, llama_cpp.llama_sampler_init_dist(seed))
        self._grammar = grammar
        # llguidance's grammar (jump-forward) instead of llama.cpp's.
        self._guided = guided
        # The one-token array the grammar check runs on.
        self._single = llama_cpp.llama_token_data(0, 1.0, 0.0)
        self._single_array = llama_cpp.llama_token_data_array(
            ctypes.pointer(self._single), 1, -1, False
        )
        self.grammar_rejections = 0

    def sample(self, ctx: Any, row: int) -> int:
        """The next token from the logits of batch row ``row``; with a grammar, one it
        accepts (and the grammar advances past it)."""
        if self._greedy:
            # The greedy sampler's pick (the highest logit, ties to the lower id) without
            # the 49,152-entry candidate array llama_sampler_sample builds: 7 µs, not 50.
            token = int(self._logits(ctx, row).argmax())
        else:
            token = int(llama_cpp.llama_sampler_sample(self._chain, ctx, row))
        if self._guided is not None:
            return self._sample_guided(self._guided, token, ctx, row)
        if self._grammar is None:
            return token
        if not self._grammar_accepts(token):
            self.grammar_rejections += 1
            found = self._best_accepted(ctx, row) if self._greedy else None
            token = self._sample_within_grammar(ctx, row) if found is None else found
        llama_cpp.llama_sampler_accept(self._grammar, token)
        return token

    def forced_tokens(self, sampled: int, limit: int) -> list[int]:
        """The tokens the grammar forces after ``sampled`` (at most ``limit``), taken as
        written; none without jump-forward."""
        if self._guided is None:
            return []
        return self._guided.forced_tokens(sampled, limit)

    @property
    def grammar_done(self) -> bool:
        """The grammar allows no more text (only known with jump-forward)."""
        return self._guided is not None and self._guided.stopped

    def _sample_guided(self, guided: GuidedGrammar, token: int, ctx: Any, row: int) -> int:
        """``token`` if llguidance's grammar accepts it, else as :meth:`sample` does with
        llama.cpp's: the best accepted of a greedy request's best candidates, or the
        chain run again over the masked vocabulary."""
        if not guided.accepts(token):
            self.grammar_rejections += 1
            found = self._best_accepted(ctx, row, guided.accepts) if self._greedy else None
            token = self._sample_masked(ctx, row, guided) if found is None else found
        guided.accept(token)
        return token

    def _sample_masked(self, ctx: Any, row: int, guided: GuidedGrammar) -> int:
        logits = np.array(self._logits(ctx, row), dtype=np.float32)
        allowed = guided.allowed()
        logits[~allowed] = -np.inf
        if self._greedy:
            token = int(logits.argmax())
        else:
            size = self._vocabulary_size
            candidates = np.empty(size, dtype=_TOKEN_DATA)
            candidates["id"] = np.arange(size, dtype=np.int32)
            candidates["logit"] = logits
            candidates["p"] = 0.0
            array = llama_cpp.llama_token_data_array(
                candidates.ctypes.data_as(llama_cpp.llama_token_data_p), size, -1, False
            )
            llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(array))
            if not 0 <= array.selected < array.size:
                raise RuntimeError("the grammar left no token to sample")
            token = int(array.data[array.selected].id)
        if not math.isfinite(float(logits[token])) or not allowed[token]:
            raise RuntimeError("the grammar left no token to sample")
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def _best_accepted(
        self, ctx: Any, row: int, accepts: Callable[[int], bool] | None = None
    ) -> int | None:
        """The highest-logit token the grammar accepts among the best
        :data:`GREEDY_CANDIDATES` (ties to the lower id), or None."""
        size = self._vocabulary_size
        count = min(GREEDY_CANDIDATES, size)
        if count <= 0:
            return None
        logits = self._logits(ctx, row)
        best = np.argpartition(logits, size - count)[size - count :]
        check = accepts or self._grammar_accepts
        for token in best[np.lexsort((best, -logits[best]))]:
            if check(int(token)):
                llama_cpp.llama_sampler_accept(self._chain, int(token))
                return int(token)
        return None

    def _logits(self, ctx: Any, row: int) -> Any:
        """Batch row ``row``'s logits, over the vocabulary (a view, not a copy)."""
        pointer = llama_cpp.llama_get_logits_ith(ctx, row)
        return np.ctypeslib.as_array(pointer, shape=(self._vocabulary_size,))

    def _grammar_accepts(self, token: int) -> bool:
        single: Any = self._single  # ctypes fields take plain ints
        single.id = token
        single.logit = 1.0
        single.p = 0.0
        array = self._single_array
        array.size = 1
        array.selected = -1
        array.sorted = False
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return not math.isinf(single.logit)

    def _sample_within_grammar(self, ctx: Any, row: int) -> int:
        """The chain run again on logits the grammar has masked, over the vocabulary."""
        size = self._vocabulary_size
        logits = self._logits(ctx, row)
        candidates = np.empty(size, dtype=_TOKEN_DATA)
        candidates["id"] = np.arange(size, dtype=np.int32)
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = llama_cpp.llama_token_data_array(
            candidates.ctypes.data_as(llama_cpp.llama_token_data_p), size, -1, False
        )
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            raise RuntimeError("the grammar left no token to sample")
        token = int(array.data[array.selected].id)
        if not self._grammar_accepts(token):
            raise RuntimeError("the grammar left no token to sample")
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
