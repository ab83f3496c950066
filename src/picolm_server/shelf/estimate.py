"""A model's memory before it is first loaded, estimated from its GGUF: the tensor bytes
(the weights, mapped or copied, as they are in the file) plus the KV cache for the
context it will be given. Once loaded, a model's cost is what it measurably took; this
is the figure until then.

The KV cache is ``layers x context x (K width + V width) x 2 bytes`` (both engines keep
it in f16): with K and V each ``kv_heads x head_dim`` wide, the familiar
``n_layer x context x 2 x n_head_kv x head_dim x 2``. Head widths come from
``attention.key_length``/``value_length`` where the file gives them (Gemma's heads are
wider than ``embedding_length / head_count``), and a per-layer ``head_count_kv`` array
is summed layer by layer. What it does not count: llama.cpp's compute buffers (tens of
MiB), and the smaller cache of sliding-window layers (Gemma 3 keeps a window, not the
whole context, for most layers): an estimate on the safe side, corrected by the
measurement after the first load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ..config.settings import LlamaCppSection, PicoLMSection
from ..gguf import GGUFMetadata

KV_BYTES_PER_VALUE = 2  # f16
# PicoLM's context when the file does not say (engines/picolm/engine.py reads the same).
PICOLM_DEFAULT_MODEL_CONTEXT = 2048


def _per_layer(value: object, layers: int) -> list[int] | None:
    """A count given once for every layer, or layer by layer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return [value] * layers
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == layers:
        counts = list(value)
        if all(isinstance(count, int) and not isinstance(count, bool) for count in counts):
            return counts
    return None


def kv_cache_bytes(metadata: GGUFMetadata, context_tokens: int) -> int | None:
    """The f16 KV cache of ``context_tokens`` positions, or None when the file does not
    give the attention's shape."""
    values, arch = metadata.values, metadata.architecture
    layers = values.get(f"{arch}.block_count")
    embedding = values.get(f"{arch}.embedding_length")
    if not isinstance(layers, int) or layers <= 0 or not isinstance(embedding, int):
        return None
    heads = _per_layer(values.get(f"{arch}.attention.head_count"), layers)
    if heads is None or not any(heads):
        return None
    kv_heads = _per_layer(values.get(f"{arch}.attention.head_count_kv", heads), layers)
    if kv_heads is None:
        kv_heads = heads  # an odd value: the widest the file could mean
    head_dim = embedding // max(heads)
    key_width = values.get(f"{arch}.attention.key_length", head_dim)
    value_width = values.get(f"{arch}.attention.value_length", head_dim)
    if not isinstance(key_width, int) or not isinstance(value_width, int):
        key_width = value_width = head_dim
    row = sum(count * (key_width + value_width) for count in kv_heads if count > 0)
    return context_tokens * row * KV_BYTES_PER_VALUE


def context_tokens(
    engine: Literal["picolm", "llama_cpp"],
    options: PicoLMSection | LlamaCppSection,
    metadata: GGUFMetadata,
) -> int:
    """The positions the engine will allocate a cache for: PicoLM's context is capped at
    the model's own; llama.cpp gives each of its ``parallel`` slots the whole context."""
    if engine == "picolm":
        return min(options.context_length, metadata.context_length or PICOLM_DEFAULT_MODEL_CONTEXT)
    slots = options.parallel if isinstance(options, LlamaCppSection) else 1
    return options.context_length * slots


def memory_estimate(tensor_bytes: int, metadata: GGUFMetadata, context: int) -> int:
    """Tensor bytes plus the KV cache of ``context`` positions (none counted when the
    file does not say the attention's shape)."""
    return tensor_bytes + (kv_cache_bytes(metadata, context) or 0)
