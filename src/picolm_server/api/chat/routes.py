"""``POST /v1/chat/completions``: accept the request, hand its spec to the core, shape
the reply."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ...http.affinity import SESSION_HEADER, session_id
from ...http.requests import accept, until_disconnected
from ...http.responses import EventStreamResponse, JSONResponse
from ...http.route_table import Routes
from .convert import chat_spec
from .respond import chat_completion, chunk_events
from .types import ChatCompletionRequest

router = Routes()


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request) -> Response:
    parsed, core, observer = await accept(request, ChatCompletionRequest)
    spec = chat_spec(parsed)
    # Returned so that clients behind a load balancer can send it back (docs/deploy.md).
    session = {SESSION_HEADER: session_id(parsed, request.headers.get(SESSION_HEADER))}
    if parsed.stream:
        stream = await until_disconnected(request, core.open(spec, observer))
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        return EventStreamResponse(chunk_events(stream, core.model_id, include_usage), session)
    reply = await until_disconnected(request, core.complete(spec, observer))
    return JSONResponse(chat_completion(reply, core.model_id), headers=session)
