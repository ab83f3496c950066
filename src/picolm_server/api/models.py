"""``GET /v1/models`` and ``GET /v1/models/{id}``: the served model, as OpenAI lists
models.

The model types (pydantic) are imported by the handlers, not with this module: the
server is ready before it has loaded pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

from ..errors import ModelNotFoundError
from ..generation import GenerationCore
from ..http.requests import core_of
from ..http.responses import JSONResponse
from ..http.route_table import Routes

if TYPE_CHECKING:
    from .model_types import Model

router = Routes()


def _model(core: GenerationCore) -> Model:
    from .model_types import Model

    info = core.engine.model
    return Model(id=info.id, created=info.created, owned_by=info.owned_by)


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    from .model_types import ModelList

    return JSONResponse(ModelList(data=[_model(core_of(request))]))


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> JSONResponse:
    core = core_of(request)
    if model_id != core.model_id:
        raise ModelNotFoundError(model_id)
    return JSONResponse(_model(core))
