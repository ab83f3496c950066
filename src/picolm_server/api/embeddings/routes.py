"""``POST /v1/embeddings``: accept the request, embed through the core (off the event
loop; abandoned when the client goes away or the time limit passes)."""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import Response

from ...engines.base import EmbeddingInput, Embeddings
from ...errors import EngineTimeoutError
from ...generation import ModelCore
from ...http.requests import accept, until_disconnected
from ...http.responses import JSONResponse
from ...http.route_table import Routes
from .convert import embedding_inputs, embedding_list, refuse_dimensions
from .types import EmbeddingRequest

router = Routes()


async def embed_in_time(
    core: ModelCore, inputs: list[EmbeddingInput], *, truncate: bool = False
) -> Embeddings:
    """The embeddings, within the model's ``timeout_seconds`` (Ollama's API too)."""
    timeout = core.defaults.timeout_seconds
    try:
        with anyio.fail_after(timeout):
            return await core.embed(inputs, truncate=truncate)
    except TimeoutError:
        raise EngineTimeoutError(
            f"The embeddings were not computed within {timeout:g} seconds."
        ) from None


@router.post("/v1/embeddings")
async def create_embeddings(request: Request) -> Response:
    parsed, core, _ = await accept(request, EmbeddingRequest)
    inputs = embedding_inputs(parsed.input)
    result = await until_disconnected(request, embed_in_time(core, inputs))
    if result.vectors:
        refuse_dimensions(parsed, len(result.vectors[0]))
    reply = embedding_list(result, core.model_id, parsed.encoding_format)
    return JSONResponse(reply)
