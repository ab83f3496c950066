"""Jump-forward: a request's grammar run by llguidance, which says where the grammar
fixes the next text, so that text is written into the reply, not generated.

A tool call or a ``json_schema`` reply is mostly text its grammar fixes: the braces, the
keys in order, ``": ``, the commas, the rest of an enum value once its start is unique,
the closing brackets. Generated token by token, each costs a decode step of one row
although the grammar allows nothing else. llguidance (``LLMatcher``) runs the same GBNF
grammar the server builds for llama.cpp (:mod:`picolm_server.tool_calls.grammar`,
converted to its Lark dialect by its own ``gbnf_to_lark``) and, after every token, says
which tokens the grammar forces (``compute_ff_tokens``). The decode loop appends those to
the sampled token and computes them together, as a prompt chunk of several rows (about a
quarter of a generated token's time each here), and samples only where the model has a
choice (:mod:`.slots`).

**Tokenization.** The forced tokens are llama.cpp's own tokenization of the forced
bytes, and llguidance leaves out the last ones when the text after them could still
merge with them (the model would write ``"age": 4`` as ``"age": 4`` plus digits, not with
the space fused to them). Where the sampled token meets the forced text, the two are
tokenized together again (:meth:`GuidedGrammar.forced_tokens`): only the forced tokens
that tokenization keeps are written, so the model is never shown a cut of the text
its tokenizer would not make; the rest it generates itself (and jump-forward resumes
after its next token).

**Checking and masking.** As with llama.cpp's grammar (:mod:`.sampling`), the sampled
token is checked first (``validate_tokens``, about a microsecond), and the vocabulary's
mask is computed only when the grammar rejects it.

A grammar llguidance cannot run (a conversion or compile error) falls back to llama.cpp's
GBNF grammar, without jump-forward; so does every grammar when the ``llguidance`` package
is missing.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

logger = logging.getLogger("picolm_server.engine.llama_cpp")

# Compiled grammars kept (by GBNF text), as GrammarCache keeps llama.cpp's.
MATCHER_CACHE_SIZE = 32


def guidance_available() -> bool:
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


class GuidedGrammar:
    """One request's grammar in llguidance: checks tokens, masks the vocabulary, and
    says which tokens the grammar forces next. Used by the decode loop's thread only."""

    def __init__(self, matcher: Any, tokenizer: Any, vocabulary_size: int) -> None:
        self._matcher = matcher
        self._tokenizer = tokenizer
        self._vocabulary_size = vocabulary_size
        words = (vocabulary_size + 31) // 32
        self._bitmask = np.full(words, -1, dtype=np.int32)

    def accepts(self, token: int) -> bool:
        return int(self._matcher.validate_tokens([token])) == 1

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused a token: {self._matcher.get_error()}")

    def allowed(self) -> Any:
        """A boolean array over the vocabulary: the tokens the grammar accepts next."""
        bitmask = self._bitmask
        self._matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)
        bits = np.unpackbits(bitmask.view(np.uint8), bitorder="little")
        return bits[: self._vocabulary_size].astype(bool)

    @property
    def stopped(self) -> bool:
        """The grammar allows nothing more: the reply is complete."""
        return bool(self._matcher.is_stopped())

    def forced_tokens(self, sampled: int, limit: int) -> list[int]:
        """The tokens the grammar forces after ``sampled`` (already accepted), at most
        ``limit``, accepted too; only those llama.cpp's tokenizer makes of the sampled
        token's text and theirs together (see the module's docstring)."""
        if limit <= 0 or self._matcher.is_stopped():
            return []
        forced = [int(t) for t in self._matcher.compute_ff_tokens()]
        if not forced:
            return []
        tokenizer = self._tokenizer
        together = tokenizer.tokenize_bytes(
            tokenizer.decode_bytes([sampled]) + tokenizer.decode_bytes(forced)
        )
        if not together or together[0] != sampled:
            return []
        kept = 0
        for mine, theirs in zip(together[1:], forced, strict=False):
            if mine != theirs:
                break
            kept += 1
        forced = forced[: min(kept, limit)]
        if forced and not self._matcher.consume_tokens(forced):
            raise RuntimeError(f"the grammar refused its own text: {self._matcher.get_error()}")
        return forced


class GuidanceGrammars:
    """llguidance for one model: its tokenizer (read off the llama.cpp vocabulary once,
    about a second for SmolLM2's 49,152 tokens, on first need) and the grammars compiled
    for it, each request getting a copy of its own. Thread-safe."""

    def __init__(self, vocab: Any, vocabulary_size: int, size: int = MATCHER_CACHE_SIZE) -> None:
        self._vocab = vocab
        self._vocabulary_size = vocabulary_size
        self._size = size
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        # GBNF text -> a compiled matcher never used itself, or why it could not be.
        self._compiled: OrderedDict[str, Any] = OrderedDict()

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = _tokenizer_of(self._vocab)
        return self._tokenizer

    def grammar(self, gbnf: str) -> GuidedGrammar | None:
        """A grammar of the request's own, or None when llguidance cannot run this one."""
        with self._lock:
            compiled = self._compiled.get(gbnf)
            if compiled is None:
                compiled = self._compile(gbnf)
                self._compiled[gbnf] = compiled
                while len(self._compiled) > self._size:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(gbnf)
            if isinstance(compiled, str):
                return None
            return GuidedGrammar(compiled.deep_copy(), self.tokenizer(), self._vocabulary_size)

    def _compile(self, gbnf: str) -> Any:
        from llguidance import LLMatcher
        from llguidance.gbnf_to_lark import gbnf_to_lark

        try:
            lark = gbnf_to_lark(gbnf)
        except Exception as exc:
            logger.info("llguidance cannot read the grammar (%s): no jump-forward", exc)
            return str(exc) or type(exc).__name__
        matcher = LLMatcher(self.tokenizer(), LLMatcher.grammar_from_lark(lark), log_level=0)
        if matcher.is_error():
            error = str(matcher.get_error())
            logger.info("llguidance cannot compile the grammar (%s): no jump-forward", error)
            return error
        return matcher


def _tokenizer_of(vocab: Any) -> Any:
    """llguidance's tokenizer for a llama.cpp vocabulary: every token's text, control
    tokens marked as llguidance wants them (a leading 0xFF), and llama.cpp's own
    ``llama_tokenize`` for tokenizing forced text. As ``llguidance.llamacpp`` builds it,
    without its deprecated per-token call (a warning for each of 49,152 tokens)."""
    import ctypes

    import llama_cpp
    from llguidance import LLTokenizer

    buffer = ctypes.create_string_buffer(16 * 1024)
    tokens: list[bytes] = []
    for token in range(int(llama_cpp.llama_vocab_n_tokens(vocab))):
        size = int(llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True))
        if size < 0:
            raise ValueError(f"token {token} is longer than {len(buffer)} bytes")
        text = bytes(buffer.raw[:size])
        attr = int(llama_cpp.llama_vocab_get_attr(vocab, token))
        if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL or (
            attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
            and text.startswith(b"<")
            and text.endswith(b">")
        ):
            text = b"\xff" + text
        tokens.append(text)
    tokenize = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    return LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
        tokens=tokens,
        vocab_ptr=vocab,
        tokenize_fptr=tokenize,
        eos_token=int(llama_cpp.llama_vocab_eos(vocab)),
        slices=None,
    )
