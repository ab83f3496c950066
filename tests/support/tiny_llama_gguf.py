"""Builder of tiny LLaMA-architecture GGUF files with random weights, for tests.

This module owns the synthetic test model: about 0.8 MB of GGUF that
the real PicoLM binary (and llama.cpp) load and run in milliseconds, so tests can
drive the whole path (process, tokenizer, stdout/stderr contract, KV cache) without
downloading a real model.  Its output is gibberish by design.

What the file contains (see ``build_tiny_llama_gguf``):

* Shape: n_embd 64, 2 layers, 4 heads, 2 KV heads (GQA, head_dim 16), n_ff 128,
  F32 weights (the simplest type both engines read), context ``context_length``.
* A SentencePiece-style vocabulary with scores (``tokenizer.ggml.model = llama``),
  laid out like the LLaMA-2 one: ``<unk>``=0, ``<s>``=1 (BOS), ``</s>``=2 (EOS), the
  256 byte-fallback tokens ``<0x00>``..``<0xFF>`` (ids 3..258, type BYTE, score 0.0),
  then ~600 pieces learned by a small deterministic BPE training over the embedded
  text below (``▁the``, ``ing``, ``▁hello``, ``<|``, ``|>``, ``im``, ``start``...,
  best first), then single characters (printable ASCII, ``▁`` and a few non-ASCII
  characters such as é, ü, 中) with the lowest scores, then ``</s`` and ``<s``.
  977 entries for "default" (729 "no_space_marker", 997 "quirks").  Newline and
  tab are not pieces: like LLaMA they go through byte fallback, and so do emoji.
* Merge scores are ``-(rank // 2)``: two consecutive merges share a score on
  purpose, so the tokenizer's tie-breaking (leftmost pair wins) is exercised.
* ``</s`` and ``<s`` make the prompt *text* ``</s>``/``<s>`` merge into the EOS/BOS
  ids under PicoLM's tokenizer (llama.cpp only does that with special parsing on).
* The default model never emits EOS (its EOS logit is pushed far below the others),
  so generation always runs to the token budget (``-n N``: N+1 tokens); its output
  is random pieces, byte tokens included (so invalid UTF-8 bytes do occur).
  ``stop_at_once=True`` makes a model whose only non-zero output row is EOS, so it
  emits EOS first, every time, at any temperature.
* ``vocab="no_space_marker"`` and ``vocab="quirks"`` are variants for tokenizer
  tests (see VOCABS); llama.cpp aborts on "quirks" (it has duplicate strings).

PicoLM runs one of these in a few milliseconds (process start included) for short
prompts; llama.cpp loads "default" and "no_space_marker" too.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from pathlib import Path

import gguf
import numpy as np

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "FIM_TOKENS",
    "N_BYTE_TOKENS",
    "UNK_ID",
    "VOCABS",
    "build_tiny_llama_gguf",
    "tiny_vocab",
]

SPACE_MARKER = "\u2581"  # SentencePiece's "▁"
# Fill-in-the-middle control tokens (prefix, suffix, middle), for build_tiny_llama_gguf(fim=True).
FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")

N_EMBD = 64
N_LAYERS = 2
N_HEADS = 4
N_KV_HEADS = 2
N_FF = 128
HEAD_DIM = N_EMBD // N_HEADS
RMS_EPS = 1e-5

UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
N_BYTE_TOKENS = 256
FIRST_PIECE_ID = 3 + N_BYTE_TOKENS  # 259, as in LLaMA-2's vocabulary

# Number of BPE merges learned from the corpus; with the special, byte and
# character tokens the vocabulary ends up a little under 1,000 entries.
N_MERGES = 600

# "default": the vocabulary described in the module docstring.
# "no_space_marker": the same without "▁" and any piece containing it, which makes
# every space fall back to three byte tokens; it exercises PicoLM's prompt buffer
# limit (strlen(prompt) + 3 tokens), which silently truncates such prompts.
# "quirks": the default one plus pieces that hit the odd corners of PicoLM's
# tokenizer (see _QUIRK_PIECES); meant for tokenizer tests, not for llama.cpp.
VOCABS = ("default", "no_space_marker", "quirks")

# Appended to every vocabulary: with them the *text* "</s>" and "<s>" merges into
# the EOS/BOS ids (their score, 0.0, beats every piece), as PicoLM does whenever a
# vocabulary has such intermediate pieces.  Score -40.0 ties with two merges.
_SPECIAL_PREFIX_PIECES = (("</s", -40.0), ("<s", -40.0))

_F32_MINUS_1E30 = float(np.float32(-1e30))

# Appended to the "quirks" vocabulary, in this order (ids follow the characters).
_QUIRK_PIECES: tuple[tuple[str, float], ...] = (
    # Same text as an existing piece: which id a lookup returns depends on the path
    # of PicoLM's binary search over the (stably) sorted strings.
    (SPACE_MARKER + "the", 5.0),
    (SPACE_MARKER + "a", -3.5),
    # Scores that never win: NaN, exactly -1e30f (PicoLM needs score > -1e30f), -inf.
    ("zz", float("nan")),
    ("qq", _F32_MINUS_1E30),
    ("jj", float("-inf")),
    # Just above the floor: merges, but only when nothing else can.
    ("vv", -9.0e29),
    # C strings end at NUL: PicoLM sees this entry as "ok".
    ("ok\x00junk", -7.0),
    # An empty entry: never found (a lookup is never for "").
    ("", 0.0),
    # "x" * 2**k for k = 1..8, equal scores: a run of x's doubles up to 128, but
    # 128 + 128 is never merged because PicoLM skips concatenations >= 256 bytes.
    *(("x" * (2**k), -2.0) for k in range(1, 9)),
    # A chain that spells the byte token "<0x41>": the text "<0x41>" becomes the
    # byte token for "A" (score 0.0).
    ("<0", -60.0),
    ("<0x", -60.0),
    ("<0x4", -60.0),
    ("<0x41", -60.0),
)
# In "quirks", the tab byte token is renamed: a tab then has neither a piece nor a
# byte token, and PicoLM silently drops it.
_QUIRK_RENAMED = {3 + 0x09: "<tab-byte-removed>"}

# Non-ASCII single-character pieces.  Characters outside this list (and every
# emoji) reach the model through byte fallback.
_EXTRA_CHARS = "éèêàâçëïîôöüûäßñœ中文日本語你好世界—–“”‘’…€£©°→•"

# Training text for the BPE merges.  Written for this file: ordinary English with
# the words tests like to use ("hello", "world", "the", ...), a little French and
# German for multi-byte pieces, and chat-template markup so that "<|", "|>", "</",
# "im", "_start" and friends become pieces (which makes special-token *text* merge
# in interesting ways, as it does in real vocabularies).
_CORPUS = """\
Hello world! Hello there, hello again. The world is wide and the sea is deep.
Once upon a time there was a little robot that lived in a small house on the hill.
The robot liked reading, writing and thinking about the things it was learning.
Every morning it said hello to the world and the world said hello back.
It was running, jumping and singing in the morning light, and in the evening
it was resting under the tall trees, listening to the wind in the leaves.
What is the capital of France? The capital of France is Paris.
What is the answer? The answer is forty two. Tell me a story about a dragon.
Please write a short poem about the ocean and the stars in the night sky.
I think that this is a good idea, but we need to test it with more examples.
The server receives a request, reads the prompt, and generates the completion.
Tokens are counted, the usage is reported, and the response is returned quickly.
Another interesting thing: numbers like 1, 2, 3, 42, 100 and 2024 appear often.
She was there, he was here, they were everywhere; we were nowhere in particular.
The quick brown fox jumps over the lazy dog. The lazy dog sleeps in the sun.
Information, organisation, generation, completion, function, question, station.
Understanding, interesting, something, everything, nothing, anything, morning.
Better, faster, stronger, longer, together, another, whether, remember, never.
Le café est très bon. La crème brûlée est délicieuse. Où est la gare? Déjà vu.
Über den Wolken ist die Freiheit grenzenlos. Schöne Grüße aus München, tschüß.
你好世界。日本語の文章。中文的句子。
<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
Hello, who are you?<|im_end|>
<|im_start|>assistant
I am a helpful assistant.<|im_end|>
<|system|>
You are a friendly chatbot.</s>
<|user|>
What is the weather like today?</s>
<|assistant|>
The weather is nice and sunny today.</s>
<s>[INST] Hello, how are you? [/INST] I am fine, thank you. </s>
def hello_world(): return "hello" + " " + "world"  # print(hello_world())
{"name": "value", "items": [1, 2, 3], "ok": true, "none": null}
"""

# Pre-tokenisation for training: a merge never crosses these chunks.  A chunk is
# an optional "▁" followed by a run of letters, one digit, a run of punctuation,
# or a run of underscores (so "_start" becomes "_" + "start" pieces).
_CHUNK_RE = re.compile("▁?(?:[^\\W\\d_]+|\\d|[^\\w\\s▁]+|_+)|▁")


def _train_merges(corpus: str, n_merges: int) -> list[tuple[str, str]]:
    """Learn ``n_merges`` BPE merges over ``corpus``; fully deterministic.

    Ties in pair frequency are broken by the pair's text so the result never
    depends on dict ordering or hash seeds.
    """
    words: Counter[str] = Counter()
    for line in corpus.splitlines():
        # Same normalisation PicoLM applies to a prompt: a leading "▁", spaces to "▁".
        norm = SPACE_MARKER + line.replace(" ", SPACE_MARKER)
        words.update(_CHUNK_RE.findall(norm))
    # Each word as a list of symbols, with its frequency.
    seqs: list[tuple[list[str], int]] = [(list(w), c) for w, c in sorted(words.items())]
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for syms, count in seqs:
            for pair in itertools.pairwise(syms):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0][0] + kv[0][1], kv[0]))[0]
        merges.append(best)
        a, b = best
        merged = a + b
        for syms, _count in seqs:
            i = 0
            while i < len(syms) - 1:
                if syms[i] == a and syms[i + 1] == b:
                    syms[i : i + 2] = [merged]
                i += 1
    return merges


@functools.cache
def tiny_vocab(
    vocab: str = "default",
) -> tuple[tuple[str, ...], tuple[float, ...], tuple[int, ...]]:
    """Return ``(tokens, scores, token_types)`` of the named synthetic vocabulary.

    Cached: the BPE training takes a fraction of a second and tests build many files.
    """
    if vocab not in VOCABS:
        raise ValueError(f"unknown vocab {vocab!r}; expected one of {VOCABS}")
    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    scores: list[float] = [0.0, 0.0, 0.0]
    types: list[int] = [
        int(gguf.TokenType.UNKNOWN),
        int(gguf.TokenType.CONTROL),
        int(gguf.TokenType.CONTROL),
    ]
    # Byte tokens score 0.0 like LLaMA-2's.  No two pieces of "default" spell
    # "<0xHH>", so there they are never the product of a merge ("quirks" has one).
    for byte in range(N_BYTE_TOKENS):
        tokens.append(f"<0x{byte:02X}>")
        scores.append(0.0)
        types.append(int(gguf.TokenType.BYTE))

    seen = set(tokens)

    def keep(piece: str) -> bool:
        return not (vocab == "no_space_marker" and SPACE_MARKER in piece)

    for rank, (left, right) in enumerate(_train_merges(_CORPUS, N_MERGES)):
        piece = left + right
        # A merge can spell an existing token ("</s" + ">" is EOS): the vocabulary
        # cannot hold the same text twice, and the existing token (with its higher
        # score) is what the merge then produces.
        if piece in seen or not keep(piece):
            continue
        seen.add(piece)
        tokens.append(piece)
        scores.append(-float(rank // 2))
        types.append(int(gguf.TokenType.NORMAL))

    chars = [SPACE_MARKER] + [chr(c) for c in range(0x21, 0x7F)] + list(_EXTRA_CHARS)
    for i, ch in enumerate(chars):
        if ch in seen or not keep(ch):
            continue
        seen.add(ch)
        tokens.append(ch)
        scores.append(-1000.0 - i)
        types.append(int(gguf.TokenType.NORMAL))

    extras = _SPECIAL_PREFIX_PIECES + (_QUIRK_PIECES if vocab == "quirks" else ())
    for piece, score in extras:
        tokens.append(piece)
        scores.append(score)
        types.append(int(gguf.TokenType.NORMAL))
    if vocab == "quirks":
        for token_id, piece in _QUIRK_RENAMED.items():
            tokens[token_id] = piece
    return tuple(tokens), tuple(scores), tuple(types)


def _random_weights(
    n_vocab: int, *, seed: int, stop_at_once: bool
) -> dict[str, np.ndarray[tuple[int, ...], np.dtype[np.float32]]]:
    """Random F32 tensors of the tiny shape, in GGUF (llama.cpp) naming and layout.

    A numpy array of shape (rows, cols) is stored with GGUF dims [cols, rows]: row r
    of a projection is output r, which is what both PicoLM and llama.cpp expect.
    """
    rng = np.random.default_rng(seed)
    kv_dim = N_KV_HEADS * HEAD_DIM

    def mat(rows: int, cols: int, std: float) -> np.ndarray[tuple[int, ...], np.dtype[np.float32]]:
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)

    def ones(n: int) -> np.ndarray[tuple[int, ...], np.dtype[np.float32]]:
        return np.ones(n, dtype=np.float32)

    embd = mat(n_vocab, N_EMBD, 1.0)
    # Dimension 0 of every embedding is a large positive constant.  The layers'
    # contributions are small (std 0.02 output projections), so the final hidden state's
    # dimension 0 stays positive for any input: an output row that is a multiple of
    # e_0 then has a logit of known sign.  That is what makes the EOS behaviour
    # below deterministic.
    embd[:, 0] = 8.0

    tensors: dict[str, np.ndarray[tuple[int, ...], np.dtype[np.float32]]] = {
        "token_embd.weight": embd,
        "output_norm.weight": ones(N_EMBD),
    }
    for layer in range(N_LAYERS):
        p = f"blk.{layer}."
        tensors[p + "attn_norm.weight"] = ones(N_EMBD)
        tensors[p + "attn_q.weight"] = mat(N_EMBD, N_EMBD, 0.3)
        tensors[p + "attn_k.weight"] = mat(kv_dim, N_EMBD, 0.3)
        tensors[p + "attn_v.weight"] = mat(kv_dim, N_EMBD, 0.3)
        tensors[p + "attn_output.weight"] = mat(N_EMBD, N_EMBD, 0.02)
        tensors[p + "ffn_norm.weight"] = ones(N_EMBD)
        tensors[p + "ffn_gate.weight"] = mat(N_FF, N_EMBD, 0.3)
        tensors[p + "ffn_up.weight"] = mat(N_FF, N_EMBD, 0.3)
        tensors[p + "ffn_down.weight"] = mat(N_EMBD, N_FF, 0.02)

    eos_row = np.zeros(N_EMBD, dtype=np.float32)
    output: np.ndarray[tuple[int, ...], np.dtype[np.float32]]
    if stop_at_once:
        # All logits are exactly 0 except EOS's, which is positive (see above).
        output = np.zeros((n_vocab, N_EMBD), dtype=np.float32)
        eos_row[0] = 1.0
    else:
        # Random head: the final hidden state has norm 8 with dimension 0 near 5.7,
        # so EOS's logit is near -57 while the others have a std of about 2.4: EOS
        # is never picked, greedy or sampled.
        output = mat(n_vocab, N_EMBD, 0.3)
        eos_row[0] = -10.0
    output[EOS_ID] = eos_row
    tensors["output.weight"] = output
    return tensors


def build_tiny_llama_gguf(
    path: Path,
    *,
    chat_template: str | None = None,
    stop_at_once: bool = False,
    seed: int = 0,
    context_length: int = 512,
    vocab: str = "default",
    fim: bool = False,
) -> Path:
    """Write a tiny random LLaMA GGUF to ``path`` and return ``path``.

    ``chat_template`` is stored as ``tokenizer.chat_template`` when given.
    ``stop_at_once`` makes the model emit EOS as its first token, always.
    ``seed`` picks the random weights (the vocabulary does not depend on it).
    ``context_length`` is ``llama.context_length`` (PicoLM's max_seq_len).
    ``vocab`` is one of ``VOCABS``.
    ``fim`` appends the control tokens of a model trained to fill in the middle
    (``FIM_TOKENS``, ids ``len(vocab)`` and up), named by the GGUF's ``fim_*`` keys.
    """
    path = Path(path)
    tokens, scores, types = tiny_vocab(vocab)
    first_fim = len(tokens)
    if fim:
        tokens += FIM_TOKENS
        scores += (0.0,) * len(FIM_TOKENS)
        types += (int(gguf.TokenType.CONTROL),) * len(FIM_TOKENS)
    tensors = _random_weights(len(tokens), seed=seed, stop_at_once=stop_at_once)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_context_length(context_length)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEADS)
    writer.add_head_count_kv(N_KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    # PicoLM only reads the RoPE base when it is a FLOAT32, which add_rope_freq_base writes.
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_vocab_size(len(tokens))

    writer.add_tokenizer_model("llama")
    writer.add_token_list(list(tokens))
    writer.add_token_scores(list(scores))
    writer.add_token_types(list(types))
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if fim:
        for offset, part in enumerate(("pre", "suf", "mid")):
            writer.add_uint32(f"tokenizer.ggml.fim_{part}_token_id", first_fim + offset)

    for name, array in tensors.items():
        writer.add_tensor(name, array)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
