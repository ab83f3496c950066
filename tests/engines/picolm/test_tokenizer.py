"""Tests of picolm_server.engines.picolm.tokenizer (PicoLM's prompt tokenizer in Python).

Two layers:

* Unit tests: cases derived by hand from tokenizer.c, on small hand-made
  vocabularies (tie-breaking, score floor, the 256-byte merge limit, the
  signed-char lookup quirk, duplicates, the strlen+3 token limit...) and on the
  tiny GGUF of tests.support.tiny_llama_gguf.
* Differential tests against the real PicoLM binary, run only when PICOLM_BINARY
  names an executable.  For each of a few hundred texts PicoLM is run once with
  ``-n 0 --cache FILE``; its stderr gives the prompt token count, and the cache file
  gives the token *ids*: in layer 0 the V vector of a position depends only on the
  token at that position (V = W_v . rmsnorm(embedding)), so matching each saved V
  row against that vector computed for every vocabulary id recovers the exact
  sequence PicoLM fed its model.  Cache-reuse tests then check what the server
  relies on: a cache saved for a prompt whose tokens (per this tokenizer) are a
  prefix of a new prompt's holds exactly those tokens, and PicoLM's reuse of it
  (which has an off-by-one bug: position P gets token P-1) gives byte-identical
  greedy output when that bug is a no-op.

PICOLM_SIGNED_CHAR=0/1 overrides the char signedness assumed for the binary
(default: this machine's, see default_signed_char); a build with -funsigned-char
on x86 behaves like the ARM (Raspberry Pi) build.
"""

from __future__ import annotations

import math
import os
import random
import re
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from picolm_server.engines.picolm.tokenizer import (
    PicoLMTokenizer,
    default_signed_char,
    prompt_bytes,
)
from picolm_server.gguf import GGUFError, GGUFValueType
from tests.support.gguf_bytes import Array, gguf_bytes
from tests.support.tiny_llama_gguf import (
    BOS_ID,
    EOS_ID,
    RMS_EPS,
    build_tiny_llama_gguf,
    tiny_vocab,
)

SP = "\u2581"  # the SentencePiece space marker "▁"


def byte_id(b: int) -> int:
    """Id of <0xHH> in the tiny GGUF's (LLaMA-like) layout."""
    return 3 + b


def make_tokenizer(
    pieces: list[tuple[str | bytes, float]], *, signed_char: bool = False
) -> PicoLMTokenizer:
    """A tokenizer over <unk>, <s>, </s> (ids 0-2) followed by ``pieces``."""
    tokens: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    scores = [0.0, 0.0, 0.0]
    for p, s in pieces:
        tokens.append(p.encode() if isinstance(p, str) else p)
        scores.append(s)
    return PicoLMTokenizer(tokens, scores, bos_id=1, eos_id=2, signed_char=signed_char)


# ---------------------------------------------------------------------------
# Unit tests on hand-made vocabularies: expected ids worked out from tokenizer.c
# ---------------------------------------------------------------------------


def test_tie_goes_to_leftmost_pair() -> None:
    # ids: 3 ▁, 4 a, 5 b, 6 c, 7 ab, 8 bc
    base = [(SP, -10.0), ("a", -10.0), ("b", -10.0), ("c", -10.0)]
    tie = make_tokenizer([*base, ("ab", -1.0), ("bc", -1.0)])
    # "▁abc": pairs "▁a" (absent), "ab", "bc" score equally; `>` keeps the first.
    assert tie.encode("abc") == [1, 3, 7, 6]
    better_right = make_tokenizer([*base, ("ab", -1.0), ("bc", -0.5)])
    assert better_right.encode("abc") == [1, 3, 4, 8]


def test_merge_order_is_by_score_of_the_result() -> None:
    # ids: 3 ▁, 4 h, 5 e, 6 l, 7 o, 8 he, 9 ll, 10 llo, 11 hello, 12 ▁hello, 13 el
    tok = make_tokenizer(
        [
            (SP, -100.0),
            ("h", -100.0),
            ("e", -100.0),
            ("l", -100.0),
            ("o", -100.0),
            ("he", -3.0),
            ("ll", -1.0),
            ("llo", -2.0),
            ("hello", -4.0),
            (SP + "hello", -5.0),
            ("el", -0.5),
        ]
    )
    # "▁hello": best first is "el" (-0.5) -> ▁ h el l o; then "lo" absent, "hel"
    # absent, "ell" absent: stuck, although ▁hello is in the vocabulary.
    assert tok.encode("hello") == [1, 3, 4, 13, 6, 7]
    no_el = make_tokenizer(
        [
            (SP, -100.0),
            ("h", -100.0),
            ("e", -100.0),
            ("l", -100.0),
            ("o", -100.0),
            ("he", -3.0),
            ("ll", -1.0),
            ("llo", -2.0),
            ("hello", -4.0),
            (SP + "hello", -5.0),
        ]
    )
    # ll (-1) -> llo (-2) -> he (-3) -> hello (-4) -> ▁hello (-5)
    assert no_el.encode("hello") == [1, 12]


def test_score_floor_nan_and_inf_never_merge() -> None:
    floor = float(np.float32(-1e30))
    for score, merges in [
        (floor, False),  # needs score > -1e30f
        (-1.1e30, False),
        (float("-inf"), False),
        (float("nan"), False),
        (-9.0e29, True),
        (-1.0, True),
    ]:
        tok = make_tokenizer([(SP, -1.0), ("a", -1.0), ("b", -1.0), ("ab", score)])
        expected = [1, 3, 6] if merges else [1, 3, 4, 5]
        assert tok.encode("ab") == expected, score


def test_merges_of_256_bytes_or_more_are_skipped() -> None:
    # ids: 3 ▁, 4 a, then a*2 (5), a*4 (6), ..., a*256 (12)
    pieces: list[tuple[str | bytes, float]] = [(SP, -1.0), ("a", -1.0)]
    pieces += [("a" * 2**k, -1.0) for k in range(1, 9)]
    tok = make_tokenizer(pieces)
    # 128 + 128 = 256 bytes: `l1 + l2 >= 256` -> skipped, although "a"*256 exists.
    assert tok.encode("a" * 256) == [1, 3, 11, 11]
    assert tok.encode("a" * 128) == [1, 3, 11]


def test_signed_char_lookup_quirk() -> None:
    # ids: 3 ▁, 4 a, 5 aé, 6 b, 7 c, 8 d.  Sorted: </s> <s> <unk> a aé b c d ▁.
    # Looking up "a": lo=0 hi=8 mid=4 is "aé", which extends "a" with byte 0xC3.
    # Signed char: 0xC3 is negative, `> '\0'` fails, lo=5 and "a" is never found
    # (and, with no byte tokens here, the character is dropped).  Unsigned: hi=3,
    # then mid=1 ("<s>"), mid=2 ("<unk>"), mid=3 finds "a".
    pieces: list[tuple[str | bytes, float]] = [
        (SP, -1.0),
        ("a", -1.0),
        ("aé", -1.0),
        ("b", -1.0),
        ("c", -1.0),
        ("d", -1.0),
    ]
    signed = make_tokenizer(pieces, signed_char=True)
    unsigned = make_tokenizer(pieces, signed_char=False)
    assert signed.lookup("a") == -1
    assert unsigned.lookup("a") == 4
    assert signed.encode("ab") == [1, 3, 6]
    assert unsigned.encode("ab") == [1, 3, 4, 6]
    # Everything else is found either way.
    for t in (signed, unsigned):
        assert [t.lookup(p) for p in (SP, "aé", "b", "c", "d")] == [3, 5, 6, 7, 8]


def test_duplicate_strings_resolve_like_the_binary_search() -> None:
    # ids: 3 ▁, 4 a, 5 b, 6 ab, 7 ab.  Sorted (stable): </s> <s> <unk> a ab(6) ab(7) b ▁.
    # Lookup "ab": mid=3 "a" < "ab" -> lo=4; mid=5 is ab(7): found 7, not 6.
    tok = make_tokenizer([(SP, -1.0), ("a", -1.0), ("b", -1.0), ("ab", -1.0), ("ab", -2.0)])
    assert tok.lookup("ab") == 7
    assert tok.encode("ab") == [1, 3, 7]


def test_vocab_strings_end_at_nul_and_empty_entries_are_never_found() -> None:
    tok = make_tokenizer([(SP, -1.0), ("a", -1.0), ("b", -1.0), (b"ab\x00zz", -1.0), (b"", 5.0)])
    assert tok.piece_bytes(6) == b"ab"
    assert tok.encode("ab") == [1, 3, 6]
    assert tok.lookup(b"") == -1


def test_token_limit_is_strlen_plus_three() -> None:
    # No "▁" piece: the leading marker and each space fall back to three byte
    # tokens; picolm.c allocates strlen(prompt) + 3 slots and drops the rest.
    pieces: list[tuple[str | bytes, float]] = [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    pieces += [("a", -1.0), ("b", -1.0)]
    tok = make_tokenizer(pieces)
    a = 259  # then b = 260
    e2, x96, x81 = byte_id(0xE2), byte_id(0x96), byte_id(0x81)
    # "ab": BOS + 3 bytes + a + b is 6 tokens, room for 2 + 3 = 5: "b" is dropped.
    assert tok.encode("ab") == [1, e2, x96, x81, a]
    assert tok.encode("a b") == [1, e2, x96, x81, a, e2]
    assert tok.count("a b") == 6


def test_missing_byte_token_drops_the_byte() -> None:
    tok = make_tokenizer([(SP, -1.0), ("a", -1.0)])
    assert tok.encode("a\nb\u00e9a") == [1, 3, 4, 4]


# ---------------------------------------------------------------------------
# Unit tests on the tiny GGUF
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny-gguf")
    return {
        v: build_tiny_llama_gguf(d / f"tiny-{v}.gguf", vocab=v, context_length=2048)
        for v in ("default", "no_space_marker", "quirks")
    }


@pytest.fixture(scope="module")
def tiny(tiny_paths: dict[str, Path]) -> PicoLMTokenizer:
    return PicoLMTokenizer.from_gguf(tiny_paths["default"], signed_char=True)


def test_reads_vocabulary_like_gguf_reader(tiny_paths: dict[str, Path]) -> None:
    for path in tiny_paths.values():
        tok = PicoLMTokenizer.from_gguf(path)
        reader = gguf.GGUFReader(path)
        f = reader.fields["tokenizer.ggml.tokens"]
        tokens = [bytes(f.parts[i]).split(b"\0")[0] for i in f.data]
        s = reader.fields["tokenizer.ggml.scores"]
        scores = [float(s.parts[i][0]) for i in s.data]
        assert tok.vocab_size == len(tokens)
        assert [tok.piece_bytes(i) for i in range(tok.vocab_size)] == tokens
        got = [tok._scores[i] for i in range(tok.vocab_size)]
        assert all(
            a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(got, scores, strict=True)
        )
        assert (tok.bos_id, tok.eos_id) == (BOS_ID, EOS_ID)
        assert tok.tokenizer_model == "llama"


def test_tiny_vocab_layout(tiny: PicoLMTokenizer) -> None:
    assert [tiny.piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert tiny.piece(tiny.eos_id) == "</s>"
    assert [tiny.piece(byte_id(b)) for b in (0, 0x0A, 0xFF)] == ["<0x00>", "<0x0A>", "<0xFF>"]
    assert 900 < tiny.vocab_size < 1100
    # No two pieces spell a byte token in the default vocabulary.
    for b in range(256):
        s = f"<0x{b:02X}>"
        assert not any(
            tiny.lookup(s[:k]) >= 0 and tiny.lookup(s[k:]) >= 0 for k in range(1, len(s))
        )


def test_tiny_known_cases(tiny: PicoLMTokenizer) -> None:
    ids = tiny.lookup
    assert tiny.encode("") == [BOS_ID]
    assert tiny.encode("Hello world") == [BOS_ID, ids(SP + "Hello"), ids(SP + "world")]
    # "\n" is not a piece: byte fallback, and <0x0A> never merges with neighbours
    # (merging concatenates the *strings* "<0x0A>").
    assert tiny.encode("Hello world\n\n")[-2:] == [byte_id(0x0A), byte_id(0x0A)]
    # A leading space gives "▁▁" ("▁▁" is not a piece).
    assert tiny.lookup(SP + SP) == -1
    assert tiny.encode(" the") == [BOS_ID, ids(SP), ids(SP + "the")]
    # U+2581 in the text is indistinguishable from a space.
    assert tiny.encode(SP + "the") == tiny.encode(" the")
    # Tabs are not normalised.
    assert tiny.encode("\tthe")[:3] == [BOS_ID, ids(SP), byte_id(0x09)]
    # A 4-byte emoji: no 4-byte piece, so four byte tokens (the leading ▁ alone).
    assert tiny.encode("\U0001f600") == [BOS_ID, ids(SP)] + [
        byte_id(b) for b in "\U0001f600".encode()
    ]
    # Invalid UTF-8: "\xc3A" is looked up as one 2-byte character, fails, and only
    # its first byte falls back; the scan resumes at "A".
    assert tiny.encode(b"\xc3A") == [BOS_ID, ids(SP), byte_id(0xC3), ids("A")]
    # A NUL ends the C string.
    assert tiny.encode("Hello\0 world") == tiny.encode("Hello")
    assert tiny.encode(b"\0abc") == [BOS_ID]
    # Special-token text merges into the special id once "</s" / "<s" exist.
    assert tiny.encode("a</s>") == [BOS_ID, ids(SP + "a"), EOS_ID]
    assert tiny.encode("x<s>") == [BOS_ID, ids(SP), ids("x"), BOS_ID]
    assert tiny.count("Hello world") == 3
    assert tiny.encode("Hello world", bos=False) == [ids(SP + "Hello"), ids(SP + "world")]
    assert tiny.count("Hello world", bos=False) == 2


def test_decode_prints_tokens_as_picolm_does(tiny: PicoLMTokenizer) -> None:
    # tokenizer_decode: no space after BOS (itself "<s>", a control token's text), a
    # leading "▁" is a space, <0xHH> one byte.
    for text in ("Hello world", "Hello world\n\n", "\U0001f600 the", "x the world"):
        assert tiny.decode(tiny.encode(text)).decode("utf-8") == "<s>" + text
    assert tiny.decode(tiny.encode("Hello world", bos=False)) == b" Hello world"
    assert tiny.decode([byte_id(0xC3), byte_id(0xA9)]) == "é".encode()
    assert tiny.decode([EOS_ID]) == b"</s>"


def test_tiny_signed_char_difference(tiny_paths: dict[str, Path]) -> None:
    signed = PicoLMTokenizer.from_gguf(tiny_paths["default"], signed_char=True)
    unsigned = PicoLMTokenizer.from_gguf(tiny_paths["default"], signed_char=False)
    pieces = [signed.piece_bytes(i) for i in range(signed.vocab_size)]
    # Unsigned char: a correct binary search, every (unique) piece is found.
    assert all(unsigned.lookup(p) == i for i, p in enumerate(pieces) if p)
    # Signed char: a few pieces are lost, each a proper prefix of another piece
    # whose next byte is >= 0x80 (which ones depends on the search paths).
    lost = [p for p in pieces if p and signed.lookup(p) < 0]
    assert 0 < len(lost) < 30
    for p in lost:
        assert any(q.startswith(p) and len(q) > len(p) and q[len(p)] >= 0x80 for q in pieces)
    # A lost single character falls back to its bytes.
    char = next(p for p in lost if len(p.decode()) == 1)
    assert signed.encode(char)[2:] == [byte_id(b) for b in char]
    assert unsigned.encode(char)[2:] == [unsigned.lookup(char)]


def test_prompt_bytes() -> None:
    assert prompt_bytes("héllo") == "héllo".encode()
    assert prompt_bytes(b"ab\0cd") == b"ab"
    with pytest.raises(UnicodeEncodeError):
        prompt_bytes("\ud800")


def test_default_signed_char_is_a_bool() -> None:
    assert isinstance(default_signed_char(), bool)


# ---------------------------------------------------------------------------
# What PicoLM's parse_gguf takes from a file
# ---------------------------------------------------------------------------

T = GGUFValueType
VOCAB = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), (SP, -1.0), ("a", -2.0), (SP + "a", -1.5)]


def vocab_file(
    path: Path, *kvs: tuple[str, GGUFValueType, Any], dims: tuple[int, ...] = ()
) -> Path:
    tokens = ("tokenizer.ggml.tokens", T.ARRAY, Array(T.STRING, [t for t, _ in VOCAB]))
    scores = ("tokenizer.ggml.scores", T.ARRAY, Array(T.FLOAT32, [s for _, s in VOCAB]))
    tensors = [("blk.0.attn_q.weight", (8, 8)), ("token_embd.weight", dims)] if dims else []
    path.write_bytes(gguf_bytes([tokens, scores, *kvs], tensors))
    return path


def test_vocabulary_size_and_special_ids_as_picolm_takes_them(tmp_path: Path) -> None:
    # No vocab_size key and no token_embd: as many as there are tokens; BOS 1, EOS 2.
    tok = PicoLMTokenizer.from_gguf(vocab_file(tmp_path / "a.gguf"))
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (len(VOCAB), 1, 2)
    assert tok.encode(" a") == [1, 3, 5] and tok.tokenizer_model is None
    # llama.vocab_size (only that key) pads the vocabulary with empty entries.
    tok = PicoLMTokenizer.from_gguf(
        vocab_file(
            tmp_path / "b.gguf",
            ("llama.vocab_size", T.INT32, 9),
            ("phi3.vocab_size", T.INT32, 3),
            ("tokenizer.ggml.bos_token_id", T.UINT16, 3),
            ("tokenizer.ggml.eos_token_id", T.INT64, -1),
            ("tokenizer.ggml.model", T.STRING, "llama"),
        )
    )
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (9, 3, 0xFFFFFFFF)
    assert tok.piece_bytes(8) == b"" and tok.tokenizer_model == "llama"
    # Without it, token_embd.weight's dimension that is not the embedding length; an id
    # given as a float (or a string) is 0, as PicoLM's skip_meta_value returns.
    for dims, size in (((16, 7), 7), ((7, 16), 7), ((16, 16), 16)):
        tok = PicoLMTokenizer.from_gguf(
            vocab_file(
                tmp_path / "c.gguf",
                ("general.embedding_length", T.UINT32, 99),
                ("llama.embedding_length", T.UINT32, 16),
                ("tokenizer.ggml.bos_token_id", T.FLOAT32, 2.0),
                ("tokenizer.ggml.eos_token_id", T.STRING, "2"),
                dims=dims,
            )
        )
        assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (size, 0, 0)


def test_a_vocabulary_picolm_could_not_use_is_refused(tmp_path: Path) -> None:
    bad_tokens = ("tokenizer.ggml.tokens", T.ARRAY, Array(T.UINT8, [1, 2]))
    bad_scores = ("tokenizer.ggml.scores", T.ARRAY, Array(T.FLOAT64, [1.0, 2.0]))
    for kvs in ([bad_tokens], [bad_scores], [("llama.vocab_size", T.INT32, -5)], []):
        path = tmp_path / "m.gguf"
        path.write_bytes(gguf_bytes(kvs))
        with pytest.raises(ValueError):
            PicoLMTokenizer.from_gguf(path)
    path.write_bytes(b"GGUF" + bytes(3))
    with pytest.raises(GGUFError):
        PicoLMTokenizer.from_gguf(path)


# ---------------------------------------------------------------------------
# Differential tests against the real binary
# ---------------------------------------------------------------------------

PICOLM_BINARY = os.environ.get("PICOLM_BINARY", "")
needs_binary = pytest.mark.skipif(
    not (PICOLM_BINARY and os.path.isfile(PICOLM_BINARY) and os.access(PICOLM_BINARY, os.X_OK)),
    reason="set PICOLM_BINARY to a PicoLM executable to compare with the real tokenizer",
)


def binary_signed_char() -> bool:
    value = os.environ.get("PICOLM_SIGNED_CHAR")
    return default_signed_char() if value is None else value not in ("0", "false", "no")


@dataclass
class Run:
    n_prompt: int
    ids: list[int]
    stdout: bytes
    stderr: str


class KVDecoder:
    """Recovers prompt token ids from a PicoLM cache file of a tiny GGUF."""

    def __init__(self, path: Path) -> None:
        reader = gguf.GGUFReader(path)
        t = {x.name: np.asarray(x.data, dtype=np.float32) for x in reader.tensors}
        emb = t["token_embd.weight"]
        norm = emb / np.sqrt((emb * emb).mean(axis=1, keepdims=True) + RMS_EPS)
        norm = norm * t["blk.0.attn_norm.weight"]
        # What PicoLM stores for layer 0: fp16(W_v . rmsnorm(embedding)).
        self.table = (norm @ t["blk.0.attn_v.weight"].T).astype(np.float16).astype(np.float32)
        self.table_sq = (self.table * self.table).sum(axis=1)

    def decode(self, cache: Path) -> list[int]:
        header = np.fromfile(cache, dtype=np.uint32, count=4)
        assert header[0] == 0x4B564350, "not a PicoLM KV cache file"
        n_pos, n_layers, kv_dim = (int(x) for x in header[1:])
        data = np.fromfile(cache, dtype=np.float16, offset=16).astype(np.float32)
        v_start = n_layers * n_pos * kv_dim  # K of every layer comes first
        v0 = data[v_start : v_start + n_pos * kv_dim].reshape(n_pos, kv_dim)
        dist = (v0 * v0).sum(axis=1)[:, None] - 2 * v0 @ self.table.T + self.table_sq[None]
        ids = dist.argmin(axis=1)
        best = dist[np.arange(n_pos), ids]
        # fp16 rounding differences are ~1e-5; another token is hundreds away.
        assert float(best.max(initial=0.0)) < 1e-2, "KV row matches no token"
        return [int(i) for i in ids]


def run_picolm(
    model: Path,
    prompt: bytes,
    *,
    args: tuple[str, ...] = ("-n", "0"),
    cache: Path | None = None,
    decoder: KVDecoder | None = None,
) -> Run:
    """Run the binary once on ``prompt`` (stdin); decode the saved cache if asked."""
    with tempfile.TemporaryDirectory() as tmp:
        cache_path = cache if cache is not None else Path(tmp) / "kv.bin"
        cmd = [PICOLM_BINARY, str(model), *args, "-t", "0", "-j", "1", "--cache", str(cache_path)]
        proc = subprocess.run(cmd, input=prompt, capture_output=True, timeout=60, check=False)
        stderr = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0, stderr
        m = re.search(r"^Prompt: (\d+) tokens", stderr, re.MULTILINE)
        assert m, stderr
        ids = decoder.decode(cache_path) if decoder is not None else []
        return Run(int(m.group(1)), ids, proc.stdout, stderr)


_WORDS_TEXT = (
    "hello world the a an is was in on of and to it that this what robot morning "
    "interesting something everything information assistant user system You I "
    "Hello The What café crème brûlée über Grüße München 中文 日本語 你好 ok okay "
    "running thinking tokens 42 2024 3.14 x y z M Mom chat Oh ch test"
)
_WORDS = _WORDS_TEXT.split()
_UNICODE = [
    "é",
    "ü",
    "ß",
    "ñ",
    "中",
    "日本",
    "語",
    "—",
    "“",
    "”",
    "…",
    "€",
    "→",
    "😀",
    "🎉",
    "👍🏽",
    "👩‍💻",
    "🇫🇷",
    "ж",
    "привет",
    "مرحبا",
    "שלום",
    "ﬁ",
    "e\u0301",
    "\u200b",
    "\ufeff",
    "\ufffd",
    SP,
    "\u00a0",
    "Ω",
    "𝔘",
    "\U0010ffff",
]
_CHAT = [
    "<|im_start|>system\n{a}<|im_end|>\n"
    + "<|im_start|>user\n{b}<|im_end|>\n<|im_start|>assistant\n",
    "<|system|>\n{a}</s>\n<|user|>\n{b}</s>\n<|assistant|>\n",
    "<s>[INST] <<SYS>>\n{a}\n<</SYS>>\n\n{b} [/INST]",
    "{a}</s><s>{b}",
    "<unk>{a}<0x0A>{b}<0x41><0x4>",
]


def corpus(seed: int = 1234) -> list[bytes]:
    """A deterministic mix of prompts, as bytes (the binary reads bytes)."""
    rnd = random.Random(seed)
    texts: list[str] = []
    printable = [chr(c) for c in range(0x20, 0x7F)]
    for _ in range(50):
        texts.append("".join(rnd.choice(printable) for _ in range(rnd.randint(1, 60))))
    seps = [" ", " ", " ", "  ", "\n", "\t", ", ", ". ", "\n\n", " \n", "   "]
    for _ in range(60):
        n = rnd.randint(1, 25)
        texts.append("".join(rnd.choice(_WORDS) + rnd.choice(seps) for _ in range(n)))
    for ws in [" ", "  ", "   ", "\n", "\n\n", "\t", " \t ", "\r\n", " \n ", "        "]:
        texts += [ws, ws + "hello", "hello" + ws, ws + "hello" + ws + "world" + ws]
    for _ in range(40):
        n = rnd.randint(1, 12)
        texts.append("".join(rnd.choice(_UNICODE + _WORDS + [" "]) for _ in range(n)))
    for _ in range(25):
        a = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(1, 8)))
        b = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(1, 8)))
        texts.append(rnd.choice(_CHAT).format(a=a, b=b))
    texts += [
        "</s>",
        "<s>",
        "a</s>",
        " </s>",
        "</s></s>",
        "<0x41>",
        "<|im_end|>",
        "x" * 300,
        "x" * 255,
        "a" * 129,
        "M",
        "MM M",
        "zzzz qqq jjj vv ok\tok",
    ]
    # Long prompts cost PicoLM quadratic time (its tokenizer and attention): keep few.
    for _ in range(2):
        texts.append(" ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(100, 200))))
    out = [t.encode("utf-8") for t in texts]
    out += [
        b"\xff",
        b"\xfe\xff",
        b"\xc3",
        b"\xc3A",
        b"\xe2\x96",
        b"\xe2\x96 x",
        b"\xf0\x9f\x98",
        b"\x80abc",
        b"caf\xc3\xa9\xff",
        b"\xed\xa0\x80",
        b"ab\x00cd",
        b"\x01\x02\x1b[0m",
        b"\xf8\x88\x80\x80\x80",
        b"a\xc0\xafb",
        b"\xe2\x96\x81\xe2\x96\x81",
    ]
    return [t for t in out if prompt_bytes(t)]  # PicoLM refuses an empty prompt


def vocab_texts(tok: PicoLMTokenizer, *, n_triples: int = 150, seed: int = 7) -> list[bytes]:
    """Every piece of the vocabulary once, and random triples of pieces, one per line.

    Lines are separated by "\n", a byte token that never merges, so each line is
    tokenized on its own; this reaches every lookup the signed-char quirk can touch.
    """
    pieces = [tok.piece_bytes(i).replace(SP.encode(), b" ") for i in range(3, tok.vocab_size)]
    pieces = [p for p in pieces if p]
    rnd = random.Random(seed)
    triples = [b"".join(rnd.choice(pieces) for _ in range(3)) for _ in range(n_triples)]
    lines = pieces + triples
    return [b"\n".join(lines[i : i + 60]) for i in range(0, len(lines), 60)]


def _compare(model: Path, texts: list[bytes], *, n_triples: int) -> tuple[int, list[str]]:
    tok = PicoLMTokenizer.from_gguf(model, signed_char=binary_signed_char())
    decoder = KVDecoder(model)
    texts = texts + vocab_texts(tok, n_triples=n_triples)

    def check(text: bytes) -> str | None:
        run = run_picolm(model, text, decoder=decoder)
        mine = tok.encode(text)
        if run.n_prompt == len(mine) and run.ids == mine:
            return None
        return f"{text[:80]!r}: picolm {run.n_prompt} {run.ids[:40]} ours {len(mine)} {mine[:40]}"

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        failures = [r for r in pool.map(check, texts) if r is not None]
    return len(texts), failures


@needs_binary
def test_matches_binary_default_vocab(tiny_paths: dict[str, Path]) -> None:
    n, failures = _compare(tiny_paths["default"], corpus(), n_triples=150)
    assert n > 250
    assert not failures, f"{len(failures)}/{n} differ:\n" + "\n".join(failures[:10])


@needs_binary
@pytest.mark.parametrize("vocab", ["no_space_marker", "quirks"])
def test_matches_binary_other_vocabs(tiny_paths: dict[str, Path], vocab: str) -> None:
    texts = corpus(seed=99)[::4]
    n, failures = _compare(tiny_paths[vocab], texts, n_triples=30)
    assert not failures, f"{len(failures)}/{n} differ:\n" + "\n".join(failures[:10])


def _prefix_pairs() -> Iterator[tuple[str, str]]:
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    turn1 = "<|im_start|>user\nHello, who are you?<|im_end|>\n<|im_start|>assistant\n"
    turn2 = (
        "I am a robot.<|im_end|>\n<|im_start|>user\nTell me a story about a "
        "dragon.<|im_end|>\n<|im_start|>assistant\n"
    )
    yield system + turn1, system + turn1 + turn2
    yield (
        "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n",
        (
            "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello there!</s>\n"
            "<|user|>\nWhat is the capital of France?</s>\n<|assistant|>\n"
        ),
    )
    yield "The quick brown fox", "The quick brown fox jumps over the lazy dog."


@needs_binary
@pytest.mark.parametrize("pair", list(_prefix_pairs()))
def test_cache_reuse_feeds_the_previous_token_at_the_first_new_position(
    tiny_paths: dict[str, Path], pair: tuple[str, str], tmp_path: Path
) -> None:
    """PicoLM bug (picolm.c generation loop): with P cached positions it runs
    position P on prompt token P-1 instead of token P, which is never fed.  The
    cache prefix itself is right when the tokenizer says it is a token-prefix."""
    model = tiny_paths["default"]
    tok = PicoLMTokenizer.from_gguf(model, signed_char=binary_signed_char())
    decoder = KVDecoder(model)
    first, second = (t.encode() for t in pair)
    prefix, full = tok.encode(first), tok.encode(second)
    p = len(prefix)
    assert full[:p] == prefix, "test pair is not a token prefix"

    cache = tmp_path / "conv.kv"
    saved = run_picolm(model, first, cache=cache, decoder=decoder)
    assert saved.ids == prefix
    reused = run_picolm(model, second, args=("-n", "12"), cache=cache, decoder=decoder)
    assert f"Skipping {p} cached prompt tokens" in reused.stderr
    assert reused.ids == [*full[:p], full[p - 1], *full[p + 1 :]]
    fresh = run_picolm(model, second, args=("-n", "12"), decoder=decoder)
    assert fresh.ids == full


@needs_binary
def test_cache_reuse_output_is_identical_when_the_bug_is_a_no_op(
    tiny_paths: dict[str, Path], tmp_path: Path
) -> None:
    """When prompt token P equals token P-1 the bug changes nothing: the reply from
    the reused cache is then byte-identical to a fresh run's."""
    model = tiny_paths["default"]
    tok = PicoLMTokenizer.from_gguf(model, signed_char=binary_signed_char())
    decoder = KVDecoder(model)
    first = b"Tell me: was was"
    second = b"Tell me: was was was was, and the robot said hello to the world."
    prefix, full = tok.encode(first), tok.encode(second)
    p = len(prefix)
    assert full[:p] == prefix and full[p] == full[p - 1]

    cache = tmp_path / "conv.kv"
    run_picolm(model, first, cache=cache, decoder=decoder)
    reused = run_picolm(model, second, args=("-n", "24"), cache=cache, decoder=decoder)
    assert f"Skipping {p} cached prompt tokens" in reused.stderr
    fresh = run_picolm(model, second, args=("-n", "24"), decoder=decoder)
    assert reused.ids == fresh.ids == full
    assert reused.stdout == fresh.stdout
    assert len(fresh.stdout) > 12


@needs_binary
def test_tiny_model_runs_and_stops_as_documented(tmp_path: Path) -> None:
    model = build_tiny_llama_gguf(tmp_path / "m.gguf")
    stop = build_tiny_llama_gguf(tmp_path / "stop.gguf", stop_at_once=True)
    for path, n_gen in ((model, 6), (stop, 1)):
        proc = subprocess.run(
            [PICOLM_BINARY, str(path), "-n", "5", "-t", "0"],
            input=b"Hello world\n",
            capture_output=True,
            timeout=60,
            check=False,
        )
        err = proc.stderr.decode()
        assert proc.returncode == 0, err
        assert f"Tokenizer loaded: {len(tiny_vocab()[0])} tokens, bos=1, eos=2" in err
        assert "Prompt: 4 tokens, generating up to 5" in err
        assert f"Generation: {n_gen} tokens" in err
        if path == stop:
            assert proc.stdout == b"</s>\n"
        else:
            assert not proc.stdout.endswith(b"</s>\n")
