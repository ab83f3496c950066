"""``POST /v1/completions``: parse, check, hand the spec to the core, shape the reply."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ...generation import Usage
from ...http.json_text import escape_line_separators
from ...http.requests import core_of, parse_request, until_disconnected
from ...http.route_table import Routes
from ...observability.request_log import observer_of
from .convert import (
    FimMarkers,
    completion_spec,
    engine_prompt,
    max_tokens,
    prompt_text,
    refuse_unsupported,
)
from .respond import (
    ChunkWriter,
    chunk_events,
    finish_reason,
    finished_events,
    replay,
    text_completion,
)
from .types import Completion, CompletionRequest

router = Routes()

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(reply: Completion) -> Response:
    return Response(escape_line_separators(reply.model_dump_json()), media_type="application/json")


def _sse(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)


@router.post("/v1/completions")
async def create_completion(request: Request) -> Response:
    parsed = await parse_request(request, CompletionRequest)
    core = core_of(request)
    observer = observer_of(request.scope)
    observer.request_parsed(parsed.model)
    core.check_model(parsed.model)
    refuse_unsupported(parsed)
    text = prompt_text(parsed)
    fim = FimMarkers.of(core.engine) if parsed.suffix is not None else None
    spec = completion_spec(parsed, engine_prompt(parsed, text, fim))
    echo = text if parsed.echo else ""
    writer = ChunkWriter(
        core.model_id, bool(parsed.stream_options and parsed.stream_options.include_usage)
    )

    if max_tokens(parsed) == 0:
        # Nothing to generate (OpenAI's way to echo or measure a prompt): only its size.
        usage = Usage(prompt_tokens=await core.count_prompt_tokens(spec))
        if parsed.stream:
            return _sse(replay(finished_events(writer, echo, "length", usage)))
        return _json(text_completion(echo, "length", usage, core.model_id))

    if parsed.stream:
        stream = await until_disconnected(request, core.open(spec, observer))
        return _sse(chunk_events(stream, writer, echo))
    result = await until_disconnected(request, core.complete(spec, observer))
    reason = finish_reason(result.finish_reason)
    return _json(text_completion(echo + result.text, reason, result.usage, core.model_id))
