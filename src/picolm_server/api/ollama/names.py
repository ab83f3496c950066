"""Model names in Ollama's ``name:tag`` form, and the shelf's model a name means.

Ollama names every model ``name:tag``, a name without a tag being ``name:latest``. The
shelf's ids have no tag, so each is listed as ``id:latest`` (an id with a ``:`` is
listed as it is); the catalog takes either form (``smollm2`` and ``smollm2:latest`` are
the same model, on every API: Copilot lists with Ollama's API and chats on OpenAI's).
A name is only ever looked up on the shelf.
"""

from __future__ import annotations

from ...errors import InvalidRequestError
from ...generation import GenerationCore, ModelCore
from ...observability.observation import NO_OBSERVER, GenerationObserver
from ...shelf.catalog import LATEST_TAG


def ollama_name(model_id: str) -> str:
    """``model_id`` as Ollama lists it."""
    return model_id if ":" in model_id else model_id + LATEST_TAG


def find_model(
    core: GenerationCore, name: str, observer: GenerationObserver = NO_OBSERVER
) -> ModelCore:
    """The core bound to the model ``name`` names (404 ``model 'name' not found``);
    Ollama's API has no default model: a name is required."""
    if not name:
        raise InvalidRequestError("model is required", param="model")
    return core.accept(name, observer)
