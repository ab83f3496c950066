"""Exact Python reproduction of PicoLM's prompt tokenizer.

This module owns the answer to "which tokens will PicoLM feed its model for this
prompt?".  The server needs it to count prompt tokens before starting a process
(context checks, ``usage``) and to decide whether a saved ``--cache`` file holds a
token-prefix of a new prompt.  It reproduces ``tokenizer_encode`` in PicoLM's
``tokenizer.c`` (commit cf3f2df) and the parts of ``model.c``/``picolm.c`` that
shape its input, quirks included:

1. The prompt is a C string: its UTF-8 bytes up to the first NUL byte.  Nothing is
   validated or normalised except ``' '`` (0x20 only; not tabs or newlines) which
   becomes ``▁`` (U+2581); one ``▁`` is always prepended, even before a leading
   space (``" hi"`` starts with ``▁▁``).
2. The normalised bytes are cut into "characters" by looking only at each lead byte
   (>= 0xF0: 4 bytes, >= 0xE0: 3, >= 0xC0: 2, else 1; clipped at the end), without
   checking continuation bytes.  A character that is a vocabulary entry becomes that
   token; otherwise only its *first byte* becomes a ``<0xHH>`` token and the scan
   resumes at the next byte (so the remaining bytes of an unknown 3-byte character
   are looked up one by one).  A byte whose ``<0xHH>`` token is missing is dropped.
3. Merging: repeatedly, over all adjacent pairs, concatenate the two tokens'
   vocabulary *strings* (not the text they came from: a byte token's string is
   ``"<0x0A>"``), look the result up, and apply the pair whose result has the
   highest score; ties go to the leftmost pair; a score must be > -1e30f; pairs
   whose concatenation is 256 bytes or more are skipped.  Any vocabulary entry can
   be produced, special ones included: with LLaMA-style scores (0.0 for
   ``<s>``/``</s>``, negative for ordinary pieces) prompt text ``</s>`` becomes the
   EOS id as soon as it splits into two reachable pieces (``</s`` + ``>``, ...),
   and text ``<0x41>`` the byte token for "A" if ``<0x41`` is reachable.
4. Lookups are a binary search over the vocabulary sorted with ``strcmp`` that has a
   signed-``char`` bug: when the probed entry extends the query and its next byte is
   >= 0x80, the search goes the wrong way *where ``char`` is signed* (x86, macOS,
   Windows), so some entries are never found there (they then fall back to bytes or
   are not merged), while the same binary built where ``char`` is unsigned (Linux on
   ARM, e.g. a Raspberry Pi) finds them.  We simulate the search for exactly the
   entries that can be affected (see ``_findable_ids``); everything else is a dict
   lookup.  Duplicate vocabulary strings resolve the way that search does after
   glibc's (stable, merge-sort) ``qsort``; a build on musl (unstable qsort) may
   pick another copy.
5. The vocabulary is ``llama.vocab_size`` entries (or the ``token_embd.weight``
   dimension, or the token count), entries cut at their first NUL byte, missing ones
   empty; missing scores are 0.0.  BOS/EOS default to 1/2.
6. ``picolm.c`` gives the encoder room for ``strlen(prompt) + 3`` tokens, BOS
   included, and drops anything beyond (only reachable when spaces or characters
   fall back to several byte tokens, e.g. a vocabulary without ``▁``).

For ``--cache`` reuse, note a PicoLM bug outside the tokenizer: when it skips P
cached positions, it runs position P on prompt token P-1 (token P is never fed),
so a reused cache is exactly right only when ``encode(new)[P] == encode(new)[P-1]``;
otherwise one position differs from a fresh run (tests/engines show both cases).

Speed: the C merge loop is quadratic in the prompt; this one is a heap with lazy
invalidation that applies the same merges in the same order (the best pair is the
highest score, then the lowest position; a merged symbol keeps its left position,
so positions order pairs exactly as PicoLM's array indices do), O(n log n).

The vocabulary is read by the server's GGUF reader (:mod:`picolm_server.gguf`), which
touches no tensor data and holds the token strings as they are in the file; this module
takes from what it read what PicoLM's parser takes (``_picolm_vocab``). The vocabulary
is then held packed (:mod:`.vocab`): about 0.6 MiB for 32,000 entries instead of 4.5 MiB
of Python objects, for as long as the server runs.
"""

from __future__ import annotations

import array
import bisect
import functools
import heapq
import itertools
import platform
import re
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...gguf import TOKENS_KEY, GGUFMetadata, StringArray, read_gguf_metadata
from .vocab import PackedVocabulary

__all__ = ["PicoLMTokenizer", "ReplyTokenCounter", "default_signed_char", "prompt_bytes"]

# UTF-8 of U+2581, SentencePiece's space marker.
_SPACE_MARKER = b"\xe2\x96\x81"

# PicoLM's initial best score: `float best_score = -1e30f;` and a merge needs `>`.
_SCORE_FLOOR = struct.unpack("<f", struct.pack("<f", -1e30))[0]

# `char merged[256]; if (l1 + l2 >= (int)sizeof(merged)) continue;`
_MERGE_BUF = 256

# never_merged_across remembers this many junctions (a few bytes each) before starting over.
_MAX_JUNCTIONS = 65536


def default_signed_char() -> bool:
    """Whether plain ``char`` is signed for a native C build on this machine.

    That decides which vocabulary entries PicoLM's lookup can find (module doc, 4).
    Signed on x86 everywhere and on every macOS and Windows target; unsigned on
    Linux for ARM, AArch64, RISC-V, PowerPC and s390.
    """
    if sys.platform == "darwin" or sys.platform.startswith("win"):
        return True
    machine = platform.machine().lower()
    return machine in {"x86_64", "amd64", "i386", "i486", "i586", "i686", "x86"}


def prompt_bytes(text: str | bytes) -> bytes:
    """The bytes PicoLM tokenizes for ``text``: UTF-8, cut at the first NUL byte.

    A ``str`` is encoded strictly (a lone surrogate raises ``UnicodeEncodeError``,
    as the server's own encoding of the prompt for stdin would); pass ``bytes`` to
    tokenize exactly the bytes that are sent.  PicoLM reads stdin to EOF but then
    treats the buffer as a C string, so a NUL ends the prompt.
    """
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    nul = data.find(b"\0")
    return data if nul < 0 else data[:nul]


def _c_int(value: int) -> int:
    """C's `(int)` of a 64-bit value (two's-complement wrap to 32 bits)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


@dataclass(frozen=True)
class _GGUFVocab:
    """What PicoLM's parse_gguf keeps for its tokenizer."""

    tokens: Sequence[bytes]
    scores: Sequence[float]
    vocab_size: int
    bos_id: int
    eos_id: int
    tokenizer_model: str | None


_TOKENS, _SCORES, _EMBEDDINGS = TOKENS_KEY, "tokenizer.ggml.scores", "token_embd.weight"
_EMBEDDING_LENGTH_KEYS = ("llama.embedding_length", "general.embedding_length")


def _number(metadata: GGUFMetadata, key: str, default: int) -> int:
    """PicoLM's skip_meta_value of a key: an integer (or bool) as a C ``uint64_t``, any
    other value 0; ``default`` when the file does not have the key."""
    value = metadata.values.get(key)
    if value is None:
        return 0 if key in metadata.array_lengths else default
    if isinstance(value, int):  # bool included, as PicoLM reads it as a byte
        return value & 0xFFFFFFFFFFFFFFFF
    return 0


def _picolm_vocab(metadata: GGUFMetadata) -> _GGUFVocab:
    """The tokenizer data of a GGUF file as PicoLM's parse_gguf takes it: its keys, its
    defaults (BOS 1, EOS 2) and its C conversions; a key given twice counts as given last."""
    path = metadata.path
    tokens: Sequence[bytes] = ()
    scores: Sequence[float] = ()
    found = metadata.values.get(_TOKENS)
    if isinstance(found, StringArray):
        tokens = found.encoded
    elif isinstance(found, (list, array.array)):
        # tokenizer_load reads every element as a string, whatever the array's type.
        raise ValueError(f"{path}: {_TOKENS} is not a string array")
    found = metadata.values.get(_SCORES)
    if isinstance(found, array.array) and found.typecode == "f":
        scores = found
    elif isinstance(found, (list, array.array, StringArray)):
        # PicoLM copies n raw float32 values whatever the array's type says.
        raise ValueError(f"{path}: {_SCORES} is not a float32 array")
    # Either key sets the embedding length; the later one in the file wins.
    given = [key for key in metadata.values if key in _EMBEDDING_LENGTH_KEYS]
    n_embd = _c_int(_number(metadata, given[-1], 0)) if given else 0
    vocab_size = _c_int(_number(metadata, "llama.vocab_size", 0))
    if vocab_size == 0:
        # PicoLM takes the first token_embd.weight's dims: the one that is not n_embd.
        dims = metadata.tensor_dims.get(_EMBEDDINGS, ())
        if len(dims) >= 2:
            d0, d1 = _c_int(dims[0]), _c_int(dims[1])
            vocab_size = d1 if d0 == n_embd else d0
    if vocab_size == 0 and tokens:
        vocab_size = _c_int(len(tokens))
    if vocab_size <= 0:
        raise ValueError(f"{path}: no vocabulary size")
    model = metadata.values.get("tokenizer.ggml.model")
    return _GGUFVocab(
        tokens,
        scores,
        vocab_size,
        _number(metadata, "tokenizer.ggml.bos_token_id", 1) & 0xFFFFFFFF,
        _number(metadata, "tokenizer.ggml.eos_token_id", 2) & 0xFFFFFFFF,
        model if isinstance(model, str) else None,
    )


class PicoLMTokenizer:
    """PicoLM's tokenizer for one vocabulary: ``encode`` gives the ids it feeds its model."""

    bos_id: int
    eos_id: int

    def __init__(
        self,
        tokens: Sequence[bytes],
        scores: Sequence[float],
        *,
        bos_id: int = 1,
        eos_id: int = 2,
        vocab_size: int | None = None,
        signed_char: bool | None = None,
        tokenizer_model: str | None = None,
    ) -> None:
        """Build from raw vocabulary strings and float32 scores (as in the GGUF).

        ``signed_char`` is the C ``char`` signedness of the PicoLM build to mimic
        (``None``: this machine's, see ``default_signed_char``).
        """
        vs = len(tokens) if vocab_size is None else vocab_size
        # tokenizer_load: at most vocab_size strings, each a C string (cut at NUL),
        # missing ones empty; missing scores 0.0. One at a time (gguf.EncodedStrings).
        kept = max(min(len(tokens), vs), 0)
        strs = PackedVocabulary(
            itertools.chain(
                (token.split(b"\0", 1)[0] for token in itertools.islice(tokens, kept)),
                itertools.repeat(b"", vs - kept),
            ),
            size=vs,
        )
        # float32, as PicoLM holds them (and 4 bytes each instead of a float object's 32).
        sc = array.array("f", scores[:vs])
        sc.extend([0.0] * (vs - len(sc)))
        self._strs = strs
        self._scores = sc
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.vocab_size = vs
        self.tokenizer_model = tokenizer_model
        self.signed_char = default_signed_char() if signed_char is None else signed_char
        _resolve_findable(strs, signed_char=self.signed_char)
        self._lookup = strs.find
        # Byte fallback ids; -1 when "<0xHH>" is not findable (PicoLM drops the byte).
        self._byte_ids = [strs.find(b"<0x%02X>" % b) for b in range(256)]
        # never_merged_across's answers, by junction bytes.
        self._junctions: dict[bytes, bool] = {}

    @classmethod
    def from_gguf(cls, path: Path, *, signed_char: bool | None = None) -> PicoLMTokenizer:
        """Load the vocabulary of a GGUF file as PicoLM does (no tensor data is read);
        GGUFError or ValueError when the file has none PicoLM could use."""
        metadata = read_gguf_metadata(
            Path(path), arrays=frozenset({_TOKENS, _SCORES}), tensors=frozenset({_EMBEDDINGS})
        )
        v = _picolm_vocab(metadata)
        return cls(
            v.tokens,
            v.scores,
            bos_id=v.bos_id,
            eos_id=v.eos_id,
            vocab_size=v.vocab_size,
            signed_char=signed_char,
            tokenizer_model=v.tokenizer_model,
        )

    # ---- vocabulary ----

    def piece(self, token_id: int) -> str:
        """Vocabulary text of a token as PicoLM holds it (e.g. ``"</s>"``, ``"▁the"``)."""
        return self._strs.string(token_id).decode("utf-8", "replace")

    def piece_bytes(self, token_id: int) -> bytes:
        """Vocabulary string of a token, raw (cut at its first NUL, like PicoLM)."""
        return self._strs.string(token_id)

    def lookup(self, piece: str | bytes) -> int:
        """The id PicoLM's vocab_lookup returns for ``piece``, or -1 (not findable)."""
        key = piece.encode("utf-8") if isinstance(piece, str) else piece
        return self._strs.find(key)

    def decode(self, ids: list[int]) -> bytes:
        """The bytes PicoLM prints for ``ids`` (tokenizer_decode, token by token): a
        ``<0xHH>`` token is its byte, a leading ``▁`` a space (none right after BOS)."""
        out: list[bytes] = []
        previous = -1
        for token_id in ids:
            piece = self._strs.string(token_id)
            if len(piece) >= 6 and piece.startswith(b"<0x") and piece[5:6] == b">":
                digits = piece[3:5]
                try:
                    out.append(bytes([int(digits, 16)]))
                except ValueError:
                    out.append(piece)
            elif piece.startswith(_SPACE_MARKER):
                space = b"" if previous == self.bos_id else b" "
                out.append(space + piece[len(_SPACE_MARKER) :])
            else:
                out.append(piece)
            previous = token_id
        return b"".join(out)

    # ---- encoding ----

    def encode(self, text: str | bytes, *, bos: bool = True) -> list[int]:
        """Token ids PicoLM feeds its model for the prompt ``text``.

        With ``bos=True`` (what PicoLM does), ``len()`` equals its "Prompt: N tokens".
        ``bos=False`` returns the same sequence without its leading BOS.  An empty
        prompt gives ``[bos_id]`` (PicoLM itself refuses an empty prompt).
        """
        data = prompt_bytes(text)
        ids = [self.bos_id]
        if data:
            ids += self._merge(self._initial_tokens(data))
        # picolm.c: max_prompt_tokens = strlen(prompt) + 3, BOS included.
        del ids[len(data) + 3 :]
        return ids if bos else ids[1:]

    def count(self, text: str | bytes, *, bos: bool = True) -> int:
        """``len(self.encode(text, bos=bos))``."""
        return len(self.encode(text, bos=bos))

    # ---- bounds and running counts ----

    @functools.cached_property
    def max_piece_bytes(self) -> int:
        """The longest text one generated token can print (its vocabulary string)."""
        return self._strs.longest() or 1

    @functools.cached_property
    def _max_prompt_token_bytes(self) -> int | None:
        """The most prompt bytes one prompt token can stand for, or None when a prompt
        token can stand for any number (a byte without a byte token is dropped)."""
        if min(self._byte_ids) < 0:
            return None
        # Every token is a findable entry and stands for at most its string's bytes
        # (a space is 3 bytes of "\u2581", a byte token 6); a merge's string is under
        # 256 bytes.
        strs = self._strs
        longest = max((strs.length(i) for i in strs.found_ids()), default=1)
        return max(min(longest, _MERGE_BUF - 1), 1)

    def min_prompt_tokens(self, prompt_byte_length: int) -> int:
        """A lower bound of ``count(prompt)`` (BOS included) for any prompt of that many
        UTF-8 bytes without NUL: exact arithmetic, no tokenizing, so a prompt that
        cannot fit a context is refused at the cost of its length."""
        per_token = self._max_prompt_token_bytes
        if per_token is None or prompt_byte_length <= 0:
            return 1
        return 1 + -(-prompt_byte_length // per_token)

    def reply_counter(self) -> ReplyTokenCounter:
        """A running ``count(reply, bos=False)`` over a reply that grows piece by piece."""
        return ReplyTokenCounter(self)

    def never_merged_across(self, left: int, right: int) -> bool:
        """Whether no merge can ever join a symbol ending in token ``left`` with one
        starting with token ``right``: no findable string contains the junction."""
        junction = self._strs.string(left)[-3:] + self._strs.string(right)[:3]
        known = self._junctions.get(junction)
        if known is None:
            if len(self._junctions) >= _MAX_JUNCTIONS:
                self._junctions.clear()
            known = self._junctions[junction] = junction not in self._findable_blob
        return known

    @functools.cached_property
    def _findable_blob(self) -> bytes:
        return self._strs.findable_blob()

    def _initial_tokens(self, data: bytes) -> list[int]:
        """Step 1 of tokenizer_encode: normalise, then one token per character/byte."""
        return self.initial_symbols(_SPACE_MARKER + data.replace(b" ", _SPACE_MARKER))[0]

    def initial_symbols(self, norm: bytes) -> tuple[list[int], list[int]]:
        """One token per character/byte of already normalised bytes, and the offset at
        which each token ends."""
        lookup = self._lookup
        byte_ids = self._byte_ids
        out: list[int] = []
        ends: list[int] = []
        i, n = 0, len(norm)
        while i < n:
            c = norm[i]
            clen = 4 if c >= 0xF0 else 3 if c >= 0xE0 else 2 if c >= 0xC0 else 1
            tok = lookup(norm[i : i + clen])  # slicing clips at the end, as C does
            if tok >= 0:
                out.append(tok)
                i += clen
                ends.append(i)
            else:
                i += 1
                if byte_ids[c] >= 0:
                    out.append(byte_ids[c])
                    ends.append(i)
        return out, ends

    def merged_length(self, symbols: list[int]) -> int:
        """How many tokens the merges leave of ``symbols`` (initial tokens)."""
        return len(self._merge(symbols))

    def _merge(self, toks: list[int]) -> list[int]:
        """Step 2 of tokenizer_encode (greedy best-score merges), with a heap."""
        n = len(toks)
        if n < 2:
            return toks
        string = self._strs.string
        scores = self._scores
        lookup = self._lookup
        tok = list(toks)  # tok[i] == -1: symbol i was merged into its left neighbour
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        # Heap entries: (-score, left position, left token, right position, right
        # token); the smallest is PicoLM's choice: best score, then leftmost.

        def pair(i: int, j: int) -> tuple[float, int, int, int, int] | None:
            a, b = tok[i], tok[j]
            sa, sb = string(a), string(b)
            if len(sa) + len(sb) >= _MERGE_BUF:
                return None
            m = lookup(sa + sb)
            # `scores[tok] > best_score` with best_score starting at -1e30f: a score
            # at or below that, or NaN, never merges.
            if m >= 0 and scores[m] > _SCORE_FLOOR:
                return (-scores[m], i, a, j, b)
            return None

        heap = [e for e in (pair(i, i + 1) for i in range(n - 1)) if e is not None]
        heapq.heapify(heap)
        while heap:
            _neg, i, a, j, b = heapq.heappop(heap)
            # Stale if either symbol changed since the pair was scored.
            if tok[i] != a or nxt[i] != j or tok[j] != b:
                continue
            tok[i] = lookup(string(a) + string(b))
            tok[j] = -1
            k = nxt[j]
            nxt[i] = k
            if k >= 0:
                prv[k] = i
            for left, right in ((prv[i], i), (i, k)):
                if left >= 0 and right >= 0:
                    e = pair(left, right)
                    if e is not None:
                        heapq.heappush(heap, e)

        out: list[int] = []
        i = 0
        while i >= 0:
            out.append(tok[i])
            i = nxt[i]
        return out


class ReplyTokenCounter:
    """``tokenizer.count(reply, bos=False)`` of a reply fed piece by piece, exactly, in
    time linear in the reply when it has boundaries no merge can cross.

    Merges never cross a junction of two symbols whose bytes no findable string holds
    (``never_merged_across``), and on each side of such a junction they happen as they
    would on that side alone. So the reply splits there into a settled part, counted
    once, and a tail (usually the last word) that is tokenized again at each piece. A
    reply without such a junction has its whole tail recounted at each piece: the
    engine bounds how much a reply can be.
    """

    def __init__(self, tokenizer: PicoLMTokenizer) -> None:
        self._tokenizer = tokenizer
        self._settled = 0  # tokens of the settled part
        self._length = 0  # bytes of the reply up to its first NUL (prompt_bytes)
        self._tail = _SPACE_MARKER  # normalised bytes after the settled part
        self._ended = False  # a NUL ended the text PicoLM's tokenizer would see

    def feed(self, text: str) -> int:
        """Add ``text`` to the reply; the count of the whole reply so far."""
        tokenizer = self._tokenizer
        if not self._ended:
            data = text.encode("utf-8")
            nul = data.find(b"\0")
            if nul >= 0:
                data, self._ended = data[:nul], True
            self._length += len(data)
            self._tail += data.replace(b" ", _SPACE_MARKER)
        symbols, ends = tokenizer.initial_symbols(self._tail)
        for k in range(len(symbols) - 1, 0, -1):
            cut = ends[k - 1]
            # Only between whole characters: a lone lead byte would be looked up clipped.
            if 0x80 <= self._tail[cut] < 0xC0:
                continue
            if tokenizer.never_merged_across(symbols[k - 1], symbols[k]):
                self._settled += tokenizer.merged_length(symbols[:k])
                self._tail = self._tail[cut:]
                symbols = symbols[k:]
                break
        if not self._length:
            return 0
        total = self._settled + tokenizer.merged_length(symbols)
        # picolm.c keeps at most strlen + 3 tokens, BOS included.
        return min(total, self._length + 2)


def _c_lookup(
    strs: PackedVocabulary, order: Sequence[int], query: bytes, *, signed_char: bool
) -> int:
    """PicoLM's vocab_lookup, step by step (binary search with its char quirk)."""
    n = len(query)
    lo, hi = 0, len(order) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        idx = order[mid]
        entry = strs.string(idx)
        head = entry[:n]
        # strncmp(entry, query, n): an entry shorter than n compares as smaller
        # (its NUL meets a non-NUL byte), which bytes ordering also gives.
        if head == query:
            if len(entry) == n:
                return idx
            # `if (vocab[idx][len] > '\0') hi = mid - 1; else lo = mid + 1;`
            # With signed char a byte >= 0x80 is negative: the search goes right.
            if signed_char and entry[n] >= 0x80:
                lo = mid + 1
            else:
                hi = mid - 1
        elif head < query:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


_HIGH_BYTES = re.compile(rb"[\x80-\xff]+")


def _resolve_findable(strs: PackedVocabulary, *, signed_char: bool) -> None:
    """Make each non-empty string's lookup find the id PicoLM's lookup returns for it,
    or nothing when that lookup cannot find it.

    Only two kinds of string need the search simulated: duplicates (which copy is hit
    depends on the path) and, with signed char, strings that are a proper prefix of
    some entry whose next byte is >= 0x80 (the only case where the quirk changes the
    path). For every other string the search is a correct binary search over a sorted
    array, so it finds the string's single id (which the table already gives).
    """
    suspects: set[bytes] = set(strs.duplicates)
    if signed_char:
        # The strings holding a byte >= 0x80 (a few hundred of tens of thousands), found
        # by one scan of the packed strings: no object made for the others.
        known: dict[bytes, bool] = {}
        starts, ids = strs.starts, set()
        for match in _HIGH_BYTES.finditer(strs.blob):
            ids.add(bisect.bisect_right(starts, match.start()) - 1)
        for token_id in sorted(ids):
            s = strs.string(token_id)
            for k in range(1, len(s)):
                if s[k] >= 0x80:
                    prefix = s[:k]
                    found = known.get(prefix)
                    if found is None:
                        found = known[prefix] = prefix in strs
                    if found:
                        suspects.add(prefix)
    if not suspects:
        return
    # qsort(strcmp) in glibc is a stable merge sort: equal strings stay in id order.
    # Python's sort is stable and bytes compare like strcmp (unsigned, NUL-free).
    order = sorted(range(len(strs)), key=strs.string)
    for s in suspects:
        strs.resolve(s, _c_lookup(strs, order, s, signed_char=signed_char))
