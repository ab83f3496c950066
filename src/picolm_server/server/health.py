"""``GET /health``: whether the default model's engine can serve, and how busy the
server is. Open without the API key (orchestrators and load balancers probe it). It
never loads a model: a default model that is not loaded now (the shelf made room for
another) is loaded by its next request, and the server is healthy meanwhile."""

from __future__ import annotations

from starlette.requests import Request

from ..http.requests import core_of
from ..http.responses import JSONResponse
from ..http.route_table import Routes

router = Routes()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    models = core_of(request).models
    default = models.find("").id
    engine = models.loaded_engine(default)
    ok, detail = True, "not loaded"
    if engine is not None:
        state = engine.health()
        ok, detail = state.ok, state.detail
    body = {
        "status": "ok" if ok else "unavailable",
        "engine": detail,
        "model": default,
        "running": models.running,
        "queued": models.queued,
        # Shown, not a 503: everything but stored responses still works without it.
        "response_store": request.app.state.response_store.status,
    }
    return JSONResponse(body, status_code=200 if ok else 503)
