"""Write a LLaMA GGUF with random weights in a real model's shape, for benchmarks.

The default shape is TinyLlama-1.1B's (n_embd 2048, 22 layers, 32 heads, 4 KV heads,
n_ff 5632, 32000-entry vocabulary, context 2048) with Q4_0 weights; ``--layers`` makes a
shallower model that runs proportionally faster. The vocabulary is the tests' small
SentencePiece-style one padded with unreachable entries to the vocabulary size, so the
output head has a real model's cost. Its output is gibberish.

    python bench/random_llama_gguf.py /tmp/tinyllama-shape-q4_0.gguf --layers 22

``--embd``, ``--ff``, ``--heads`` and ``--kv-heads`` make a narrower model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.tiny_llama_gguf import BOS_ID, EOS_ID, UNK_ID, tiny_vocab


def build(
    path: Path,
    *,
    layers: int = 22,
    n_embd: int = 2048,
    n_ff: int = 5632,
    heads: int = 32,
    kv_heads: int = 4,
    vocab_size: int = 32000,
    context_length: int = 2048,
    quant: str = "Q4_0",
    seed: int = 0,
) -> Path:
    tokens, scores, types = (list(x) for x in tiny_vocab("default"))
    n_real = len(tokens)
    while len(tokens) < vocab_size:
        tokens.append(f"<unused_{len(tokens)}>")
        scores.append(-1e9)
        types.append(int(gguf.TokenType.UNUSED))
    head_dim = n_embd // heads
    kv_dim = kv_heads * head_dim
    qtype = gguf.GGMLQuantizationType[quant]
    rng = np.random.default_rng(seed)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"random-llama-{layers}l")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)

    def add(name: str, rows: int, cols: int, std: float, live_rows: int | None = None) -> None:
        data = (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float32)
        if live_rows is not None:
            data[live_rows:] = 0.0
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            dtype = np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16
            writer.add_tensor(name, data.astype(dtype))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    def ones(name: str, n: int) -> None:
        writer.add_tensor(name, np.ones(n, dtype=np.float32))

    add("token_embd.weight", vocab_size, n_embd, 1.0)
    ones("output_norm.weight", n_embd)
    # Padding entries get zero output rows: never the greedy choice, so replies are
    # made of the real pieces (their text would re-tokenize into many tokens).
    add("output.weight", vocab_size, n_embd, 0.05, live_rows=n_real)
    for layer in range(layers):
        p = f"blk.{layer}."
        ones(p + "attn_norm.weight", n_embd)
        ones(p + "ffn_norm.weight", n_embd)
        add(p + "attn_q.weight", n_embd, n_embd, 0.02)
        add(p + "attn_k.weight", kv_dim, n_embd, 0.02)
        add(p + "attn_v.weight", kv_dim, n_embd, 0.02)
        add(p + "attn_output.weight", n_embd, n_embd, 0.02)
        add(p + "ffn_gate.weight", n_ff, n_embd, 0.02)
        add(p + "ffn_up.weight", n_ff, n_embd, 0.02)
        add(p + "ffn_down.weight", n_embd, n_ff, 0.02)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--quant", default="Q4_0", choices=["Q4_0", "Q8_0", "F16", "F32"])
    parser.add_argument("--embd", type=int, default=2048, help="n_embd")
    parser.add_argument("--ff", type=int, default=5632, help="n_ff")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    args = parser.parse_args()
    build(
        args.path,
        layers=args.layers,
        quant=args.quant,
        n_embd=args.embd,
        n_ff=args.ff,
        heads=args.heads,
        kv_heads=args.kv_heads,
    )
    print(args.path)


if __name__ == "__main__":
    main()
