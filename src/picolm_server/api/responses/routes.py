"""HTTP routes of the Responses API: create (streamed or not), retrieve, delete, and
list a stored response's input items."""

from __future__ import annotations

from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from ...errors import InvalidRequestError
from ...http.requests import core_of, parse_request, until_disconnected
from ...http.responses import EventStreamResponse, JSONResponse
from ...http.route_table import Routes
from ...observability.request_log import observer_of
from .events import response_json
from .service import ResponsesService
from .store import ResponseStore
from .types import DeletedResponse, ResponsesRequest

router = Routes()

MAX_LIST_LIMIT = 100


def _service(request: Request) -> ResponsesService:
    store: ResponseStore = request.app.state.response_store
    return ResponsesService(core_of(request), store)


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    # The model is accepted by the service (it serves requests made in-process too).
    parsed = await parse_request(request, ResponsesRequest)
    service = _service(request)
    observer = observer_of(request.scope)
    if parsed.stream:
        events = await until_disconnected(request, service.open_stream(parsed, observer))
        return EventStreamResponse(events)
    response = await until_disconnected(request, service.create(parsed, observer))
    return JSONResponse(response_json(response))


@router.get("/v1/responses/{response_id}")
async def retrieve_response(request: Request, response_id: str) -> Response:
    stored = await _service(request).stored(response_id)
    return JSONResponse(stored.response)


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    await _service(request).delete(response_id)
    return JSONResponse(DeletedResponse(id=response_id))


def _limit(value: str | None) -> int:
    if value is None:
        return 20
    # ASCII digits only: str.isdigit() also takes "²" and "١", which int() refuses or reads.
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIST_LIMIT:
        raise InvalidRequestError(
            f"Invalid value for 'limit': expected an integer from 1 to {MAX_LIST_LIMIT}.",
            param="limit",
        )
    return int(value)


def _order(value: str | None) -> Literal["asc", "desc"]:
    if value is None or value == "desc":
        return "desc"
    if value == "asc":
        return "asc"
    raise InvalidRequestError("Invalid value for 'order': expected 'asc' or 'desc'.", param="order")


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(request: Request, response_id: str) -> Response:
    query = request.query_params
    limit = _limit(query.get("limit"))
    order = _order(query.get("order"))
    items = list((await _service(request).stored(response_id)).context)
    if order == "desc":
        items.reverse()
    after = query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequestError(
                f"Invalid value for 'after': no input item {after!r} in this response.",
                param="after",
            )
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )
