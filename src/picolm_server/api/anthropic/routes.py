"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: parse, check, hand the
spec to the core, shape the answer. Errors on these paths are Anthropic's envelope
(:class:`~.envelope.AnthropicErrorMiddleware` rewrites every error answer there)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ...http.json_text import escape_line_separators
from ...http.requests import core_of, parse_request, until_disconnected
from ...http.route_table import Routes
from ...observability.request_log import observer_of, request_id_of
from .convert import count_spec, generation_spec
from .errors import validation_error
from .respond import message_events, reply_message
from .types import CountTokensRequest, MessagesRequest, TokensCount

router = Routes()

RequestT = TypeVar("RequestT", bound=BaseModel)


async def _parsed(request: Request, kind: type[RequestT]) -> RequestT:
    return await parse_request(request, kind, validation_error)


def _json(model: BaseModel) -> Response:
    return Response(escape_line_separators(model.model_dump_json()), media_type="application/json")


@router.post("/v1/messages")
async def create_message(request: Request) -> Response:
    parsed = await _parsed(request, MessagesRequest)
    core = core_of(request)
    observer = observer_of(request.scope)
    observer.request_parsed(parsed.model)
    core.check_model(parsed.model)
    spec = generation_spec(parsed)
    if parsed.stream:
        stream = await until_disconnected(request, core.open(spec, observer))
        return StreamingResponse(
            message_events(stream, core.model_id, request_id_of(request.scope)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    reply = await until_disconnected(request, core.complete(spec, observer))
    return _json(reply_message(reply, core.model_id))


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    parsed = await _parsed(request, CountTokensRequest)
    core = core_of(request)
    core.check_model(parsed.model)
    # The prompt's tokens as a generation of the same request counts them.
    count = await until_disconnected(request, core.count_prompt_tokens(count_spec(parsed)))
    return _json(TokensCount(input_tokens=count))
