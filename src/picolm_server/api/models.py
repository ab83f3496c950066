"""``GET /v1/models`` and ``GET /v1/models/{id}``: the shelf's models, as OpenAI lists
models, each with the shelf's fields beside OpenAI's: its engine and why, whether it is
loaded, its size on disk, its memory (measured while loaded, else the estimate), its
aliases and chat template.

The model types (pydantic) are imported by the handlers, not with this module: the
server is ready before it has loaded pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

from ..errors import ModelNotFoundError
from ..generation.models import ModelDescription
from ..http.requests import core_of
from ..http.responses import JSONResponse
from ..http.route_table import Routes

if TYPE_CHECKING:
    from .model_types import Model

router = Routes()


def _model(description: ModelDescription) -> Model:
    from .model_types import Model

    return Model(
        id=description.id,
        created=description.created,
        owned_by=description.owned_by,
        engine=description.engine,
        engine_reason=description.engine_reason,
        loaded=description.loaded,
        size_bytes=description.size_bytes,
        memory_bytes=description.memory_bytes,
        aliases=list(description.aliases),
        chat_template=description.chat_template,
        problem=description.problem,
    )


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    from .model_types import ModelList

    models = core_of(request).models.describe()
    return JSONResponse(ModelList(data=[_model(model) for model in models]))


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> JSONResponse:
    core = core_of(request)
    # By id or alias, as a request names it; the entry is the model's (its id).
    wanted = core.models.find(model_id).id if model_id else None
    for model in core.models.describe():
        if model.id == wanted:
            return JSONResponse(_model(model))
    raise ModelNotFoundError(model_id)
