"""``POST /v1/completions``: accept the request, hand its spec to the core, shape the
reply."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ...generation import Usage
from ...http.requests import accept, until_disconnected
from ...http.responses import EventStreamResponse, JSONResponse
from ...http.route_table import Routes
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
from .types import CompletionRequest

router = Routes()


@router.post("/v1/completions")
async def create_completion(request: Request) -> Response:
    parsed, core, observer = await accept(request, CompletionRequest)
    refuse_unsupported(parsed)
    text = prompt_text(parsed)
    fim = await core.inspect(FimMarkers.of) if parsed.suffix is not None else None
    spec = completion_spec(parsed, engine_prompt(parsed, text, fim))
    echo = text if parsed.echo else ""
    writer = ChunkWriter(
        core.model_id, bool(parsed.stream_options and parsed.stream_options.include_usage)
    )

    if max_tokens(parsed) == 0:
        # Nothing to generate (OpenAI's way to echo or measure a prompt): only its size.
        usage = Usage(prompt_tokens=await core.count_prompt_tokens(spec))
        if parsed.stream:
            return EventStreamResponse(replay(finished_events(writer, echo, "length", usage)))
        return JSONResponse(text_completion(echo, "length", usage, core.model_id))

    if parsed.stream:
        stream = await until_disconnected(request, core.open(spec, observer))
        return EventStreamResponse(chunk_events(stream, writer, echo))
    result = await until_disconnected(request, core.complete(spec, observer))
    reason = finish_reason(result.finish_reason)
    return JSONResponse(text_completion(echo + result.text, reason, result.usage, core.model_id))
