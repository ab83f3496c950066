"""Which engine runs a model, and why, in a short phrase for the log and ``/v1/models``.

``engine: auto`` picks PicoLM when a PicoLM binary is configured and the file is a model
PicoLM runs: LLaMA architecture, a SentencePiece vocabulary with scores
(``tokenizer.ggml.model`` is ``llama``) and only tensor types PicoLM reads (Q2_K to
Q6_K, Q8_0, Q4_0, F16, F32). Anything else goes to llama.cpp, which runs them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..gguf import GGMLType, GGUFMetadata

EngineName = Literal["picolm", "llama_cpp"]

PICOLM_TENSOR_TYPES = frozenset(
    {
        GGMLType.F32,
        GGMLType.F16,
        GGMLType.Q4_0,
        GGMLType.Q8_0,
        GGMLType.Q2_K,
        GGMLType.Q3_K,
        GGMLType.Q4_K,
        GGMLType.Q5_K,
        GGMLType.Q6_K,
    }
)


@dataclass(frozen=True)
class EngineChoice:
    engine: EngineName
    # "picolm: llama architecture, SentencePiece, Q4_K"
    reason: str


def main_tensor_type(metadata: GGUFMetadata) -> GGMLType | None:
    """The type that holds most of the tensor bytes (a file's quantisation, as its
    name would say: Q4_K for a Q4_K_M file, whose few Q6_K tensors are smaller)."""
    table = metadata.tensor_table
    if table is None or not table.tensors:
        return None
    return next(iter(table.bytes_by_type()))


def picolm_refusal(metadata: GGUFMetadata) -> str | None:
    """Why PicoLM cannot run this model, or None when it can."""
    arch = metadata.architecture
    if arch != "llama":
        return f"{arch or 'an unnamed'} architecture is not one PicoLM runs"
    vocabulary = metadata.tokenizer_model
    if vocabulary != "llama":
        return f"{vocabulary or 'an unnamed'} vocabulary is not SentencePiece"
    scores = "tokenizer.ggml.scores"
    if scores not in metadata.array_lengths and scores not in metadata.values:
        return "its SentencePiece vocabulary has no scores"
    table = metadata.tensor_table
    if table is None:
        return "its tensors were not checked"
    unread = sorted({t.type for t in table.tensors} - PICOLM_TENSOR_TYPES)
    if unread:
        names = ", ".join(tensor_type.name for tensor_type in unread)
        return f"{names} tensors are not a type PicoLM reads"
    return None


def choose_engine(
    requested: Literal["auto", "picolm", "llama_cpp"],
    metadata: GGUFMetadata | None,
    *,
    picolm_configured: bool,
) -> EngineChoice:
    """The engine for a model file (``metadata`` None: the file could not be read)."""
    if requested == "llama_cpp":
        return EngineChoice("llama_cpp", "llama_cpp: set in the configuration")
    if requested == "picolm":
        # The user's word stands; the reason says when the file looks unfit for it.
        refusal = picolm_refusal(metadata) if metadata is not None else None
        doubt = f", though {refusal}" if refusal is not None else ""
        return EngineChoice("picolm", f"picolm: set in the configuration{doubt}")
    if not picolm_configured:
        return EngineChoice("llama_cpp", "llama_cpp: no PicoLM binary is configured")
    if metadata is None:
        return EngineChoice("llama_cpp", "llama_cpp: the file could not be read")
    refusal = picolm_refusal(metadata)
    if refusal is not None:
        return EngineChoice("llama_cpp", f"llama_cpp: {refusal}")
    main = main_tensor_type(metadata)
    quantisation = f", {main.name}" if main is not None else ""
    return EngineChoice("picolm", f"picolm: llama architecture, SentencePiece{quantisation}")
