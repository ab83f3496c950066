"""``GET /health``: whether the engine can serve, and how busy the server is. Open
without the API key (orchestrators and load balancers probe it)."""

from __future__ import annotations

from starlette.requests import Request

from ..http.requests import core_of
from ..http.responses import JSONResponse
from ..http.route_table import Routes

router = Routes()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    core = core_of(request)
    state = core.engine.health()
    body = {
        "status": "ok" if state.ok else "unavailable",
        "engine": state.detail,
        "model": core.model_id,
        "running": core.scheduler.running,
        "queued": core.scheduler.queued,
        # Shown, not a 503: everything but stored responses still works without it.
        "response_store": request.app.state.response_store.status,
    }
    return JSONResponse(body, status_code=200 if state.ok else 503)
