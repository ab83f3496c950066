"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: accept the request,
hand its spec to the core, shape the answer. Every answer on these paths carries the
request's id in Anthropic's ``request-id`` header too, and errors are in Anthropic's
envelope (http/errors.py picks it by the path)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ...http.errors import id_headers
from ...http.requests import accept, until_disconnected
from ...http.responses import EventStreamResponse, JSONResponse
from ...http.route_table import Routes
from ...observability.request_log import request_id_of
from .convert import count_spec, generation_spec
from .errors import validation_error
from .respond import message_events, reply_message
from .types import CountTokensRequest, MessagesRequest, TokensCount

router = Routes()


@router.post("/v1/messages")
async def create_message(request: Request) -> Response:
    parsed, core, observer = await accept(request, MessagesRequest, validation_error)
    spec = generation_spec(parsed)
    if parsed.stream:
        stream = await until_disconnected(request, core.open(spec, observer))
        events = message_events(stream, core.model_id, request_id_of(request.scope))
        return EventStreamResponse(events, id_headers(request.scope))
    reply = await until_disconnected(request, core.complete(spec, observer))
    return JSONResponse(reply_message(reply, core.model_id), headers=id_headers(request.scope))


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    parsed, core, _ = await accept(request, CountTokensRequest, validation_error)
    # The prompt's tokens as a generation of the same request counts them.
    count = await until_disconnected(request, core.count_prompt_tokens(count_spec(parsed)))
    return JSONResponse(TokensCount(input_tokens=count), headers=id_headers(request.scope))
