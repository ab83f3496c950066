"""``POST /v1/chat/completions``: parse, check, hand the spec to the core, shape the
reply. Errors are OpenAI's envelope (the app's handler for ``APIError``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ...generation import GenerationCore
from ...http.affinity import SESSION_HEADER, session_id
from ...http.json_text import escape_line_separators
from ...http.requests import core_of, parse_request, until_disconnected
from ...http.route_table import Routes
from ...observability.request_log import observer_of
from .convert import chat_spec
from .respond import chat_completion, chunk_events
from .types import ChatCompletionRequest

router = Routes()


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request) -> Response:
    parsed = await parse_request(request, ChatCompletionRequest)
    core: GenerationCore = core_of(request)
    observer = observer_of(request.scope)
    observer.request_parsed(parsed.model)
    core.check_model(parsed.model)
    spec = chat_spec(parsed)
    # Returned so that clients behind a load balancer can send it back (docs/deploy.md).
    session = {SESSION_HEADER: session_id(parsed, request.headers.get(SESSION_HEADER))}
    if parsed.stream:
        stream = await until_disconnected(request, core.open(spec, observer))
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        return StreamingResponse(
            chunk_events(stream, core.model_id, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **session},
        )
    reply = await until_disconnected(request, core.complete(spec, observer))
    json_text = escape_line_separators(chat_completion(reply, core.model_id).model_dump_json())
    return Response(json_text, media_type="application/json", headers=session)
