"""The prompt text a run is given when it starts from a saved state, around PicoLM's
off-by-one.

With a saved state of P positions (``--cache``), PicoLM's first forward pass runs
position P on prompt token P-1, never feeds token P, and feeds the tokens after it as
usual. So the true prompt, given with a reused state, would compute a state one token
off. :func:`craft_prompt` finds a text whose tokenization puts the right tokens where
PicoLM reads them (filler where it reads nothing), checked with the exact tokenizer
(:mod:`.tokenizer`); where none checks out, the state is not reused at that length.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tokenizer import PicoLMTokenizer

_BYTE_TOKEN = re.compile(rb"^<0x([0-9A-Fa-f]{2})>$")
# Filler bytes for the positions PicoLM never feeds: byte-fallback tokens that merge with
# nothing ("<0x01>" + anything is no vocabulary entry).
_FILLER = b"\x01"
_SPACE_MARKER = "\u2581".encode()


def token_text(tokenizer: PicoLMTokenizer, token_ids: Sequence[int]) -> bytes:
    """Prompt bytes that spell ``token_ids`` (byte-fallback tokens as their raw byte)."""
    parts = []
    for token_id in token_ids:
        piece = tokenizer.piece_bytes(token_id)
        match = _BYTE_TOKEN.match(piece)
        parts.append(bytes([int(match.group(1), 16)]) if match else piece)
    # PicoLM turns every space into "▁" before it tokenizes, so a space is the same
    # input; spaces keep the prompt readable (and a stand-in's directives intact).
    return b"".join(parts).replace(_SPACE_MARKER, b" ")


def craft_prompt(tokenizer: PicoLMTokenizer, tokens: Sequence[int], positions: int) -> bytes | None:
    """A prompt that makes PicoLM, loaded with the true state of ``tokens[:positions]``,
    compute exactly the state of ``tokens`` (and the same reply), or None.

    With a cache of P positions PicoLM's first forward pass is ``forward(c[P-1], pos=P)``
    where ``c`` is the tokenization of the prompt it is given, ``c[P]`` is never fed, and
    positions after P get ``c[P+1:]``. So ``c`` must have ``len(tokens)`` tokens, with
    ``c[P-1] == tokens[P]`` and ``c[P+1:] == tokens[P+1:]``; ``c[1:P-1]`` and ``c[P]``
    are filler. Every candidate is checked with the exact tokenizer.
    """
    n = len(tokens)
    if not 2 <= positions <= n - 1:
        return None
    head = token_text(tokenizer, tokens[positions : positions + 1])
    tail = token_text(tokenizer, tokens[positions + 1 :])
    # PicoLM prepends "▁" (one token of its own before a filler byte).
    filler = max(positions - 3, 0)
    for _ in range(4):
        text = _FILLER * filler + head + _FILLER + tail
        if b"\0" in text:
            return None
        crafted = tokenizer.encode(text)
        if (
            len(crafted) == n
            and crafted[positions - 1] == tokens[positions]
            and crafted[positions + 1 :] == list(tokens[positions + 1 :])
        ):
            return text
        # Adjust the filler to where the fed token actually landed, and try again.
        try:
            landed = crafted.index(tokens[positions], 1)
        except ValueError:
            return None
        step = (positions - 1) - landed
        if step == 0 or filler + step < 0:
            return None
        filler += step
    return None
