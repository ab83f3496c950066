"""What the llama.cpp engine bounds by its vocabulary: tokenizing with a cap on the count,
and how many tokens a text holds at least, from its length alone.

**The cap.** ``llama_tokenize`` is given a buffer one token longer than the cap: a text
of more tokens leaves it unwritten and reports its count, so the engine never holds the
token list of a text it is about to refuse (a 4 MiB text is about two million tokens,
70 MB as a Python list).

**The floor.** Where every token stands for at most ``L`` bytes of the text it came
from, a text of ``n`` bytes holds at least ``ceil(n / L)`` tokens. That holds for the
tokenizers that only cut text into pieces (SentencePiece-style and byte-level BPE, which
add bytes, a leading space, and never drop any), unless a token of the vocabulary eats
the spaces beside it (``lstrip``/``rstrip``): those tokenizers, and the ones that
normalise text (WordPiece, Unigram and the rest), get no floor. With it, a prompt that
cannot fit the context is refused at the cost of its length, not of tokenizing it (a
3.9 MB message took 8 s of CPU to tokenize before its refusal). ``L`` is read off the
vocabulary once, on first need, in the tokenizer's thread.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from ..base import TokenLimitExceeded

# The piece buffer for reading the longest token text; a longer one reports its length.
_PIECE_BUFFER = 256


def tokenize_capped(
    vocab: Any, text: bytes, *, add_bos: bool, special: bool, limit: int | None
) -> list[int]:
    """``text``'s token ids; :class:`TokenLimitExceeded` (with the exact count) when
    there are more than ``limit``."""
    import llama_cpp

    # A tokenizer makes no more tokens than bytes, plus a few specials (BOS, EOS, a
    # leading-space piece): room for all of them, or for one past the cap.
    capacity = limit + 1 if limit is not None else len(text) + 8
    buffer = (llama_cpp.llama_token * capacity)()
    count = int(
        llama_cpp.llama_tokenize(vocab, text, len(text), buffer, capacity, add_bos, special)
    )
    if limit is not None and (count < 0 or count > limit):
        raise TokenLimitExceeded(abs(count))
    if count < 0:
        capacity = -count
        buffer = (llama_cpp.llama_token * capacity)()
        count = int(
            llama_cpp.llama_tokenize(vocab, text, len(text), buffer, capacity, add_bos, special)
        )
    return list(buffer[:count])


class TokenFloor:
    """The floor of a vocabulary (module doc), read once."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._lock = threading.Lock()
        self._read = False
        self._longest: int | None = None

    def longest_piece(self) -> int | None:
        """Bytes of the longest token text, or None where lengths bound nothing."""
        with self._lock:
            if not self._read:
                self._longest = self._read_longest()
                self._read = True
            return self._longest

    def min_tokens(self, plain_bytes: int) -> int:
        """The fewest tokens ``plain_bytes`` bytes of text (tokenized without special
        parsing) can be; 0 where the vocabulary gives no floor."""
        longest = self.longest_piece()
        if longest is None or plain_bytes <= 0:
            return 0
        return -(-plain_bytes // longest)

    def _read_longest(self) -> int | None:
        import llama_cpp

        vocab = self._vocab
        if int(llama_cpp.llama_vocab_type(vocab)) not in (
            llama_cpp.LLAMA_VOCAB_TYPE_SPM,
            llama_cpp.LLAMA_VOCAB_TYPE_BPE,
        ):
            return None
        strips = llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP
        buffer = ctypes.create_string_buffer(_PIECE_BUFFER)
        longest = 1
        for token in range(int(llama_cpp.llama_vocab_n_tokens(vocab))):
            attributes = int(llama_cpp.llama_vocab_get_attr(vocab, token))
            # Control tokens are never matched in plain text, so their stripping is moot.
            if attributes & strips and not attributes & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
                return None
            length = int(
                llama_cpp.llama_token_to_piece(vocab, token, buffer, _PIECE_BUFFER, 0, True)
            )
            longest = max(longest, abs(length))
        return longest
