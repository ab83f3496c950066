"""Model names in Ollama's ``name:tag`` form, and the shelf's model a name means.

Ollama names every model ``name:tag``, a name without a tag being ``name:latest``. The
shelf's ids have no tag, so each is listed as ``id:latest`` (an id with a ``:`` is
listed as it is), and a request may name a model either way: ``smollm2`` and
``smollm2:latest`` are the same model. A name is only ever looked up on the shelf.
"""

from __future__ import annotations

from ...errors import InvalidRequestError, ModelNotFoundError
from ...generation import GenerationCore, ModelCore
from ...observability.observation import NO_OBSERVER, GenerationObserver

LATEST = ":latest"


def ollama_name(model_id: str) -> str:
    """``model_id`` as Ollama lists it."""
    return model_id if ":" in model_id else model_id + LATEST


def find_model(
    core: GenerationCore, name: str, observer: GenerationObserver = NO_OBSERVER
) -> ModelCore:
    """The core bound to the model ``name`` names (404 ``model 'name' not found``);
    Ollama's API has no default model: a name is required."""
    if not name:
        raise InvalidRequestError("model is required", param="model")
    try:
        return core.accept(name, observer)
    except ModelNotFoundError:
        if not name.endswith(LATEST):
            raise
    try:
        return core.accept(name[: -len(LATEST)], observer)
    except ModelNotFoundError:
        raise ModelNotFoundError(name) from None
