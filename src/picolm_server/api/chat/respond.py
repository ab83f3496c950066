"""Chat completions out: core replies and events as ``chat.completion`` objects and
``chat.completion.chunk`` server-sent events, exactly as OpenAI shapes them."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator

from ...errors import APIError
from ...generation import (
    EventStream,
    Finish,
    Reply,
    TextDelta,
    ToolCall,
    ToolCallArguments,
    ToolCallStart,
    Usage,
)
from ...generation.drain import ends_stream_with_done
from ...http.errors import openai_body
from ...http.sse import DONE_EVENT, ContentChunkTemplate, sse_event
from .types import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    ChunkFunctionCall,
    ChunkToolCall,
    Delta,
    FinishReasonName,
    ResponseFunctionCall,
    ResponseMessage,
    ResponseToolCall,
)
from .types import Usage as WireUsage

SYSTEM_FINGERPRINT = "fp_picolm_server"


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def wire_usage(usage: Usage) -> WireUsage:
    return WireUsage.of(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)


def response_tool_calls(calls: tuple[ToolCall, ...]) -> list[ResponseToolCall]:
    return [
        ResponseToolCall(
            id=call.id, function=ResponseFunctionCall(name=call.name, arguments=call.arguments)
        )
        for call in calls
    ]


def chat_completion(reply: Reply, model: str) -> ChatCompletion:
    message = (
        ResponseMessage(
            content=reply.text or None, tool_calls=response_tool_calls(reply.tool_calls)
        )
        if reply.tool_calls
        else ResponseMessage(content=reply.text)
    )
    return ChatCompletion(
        id=completion_id(),
        created=int(time.time()),
        model=model,
        choices=[Choice(message=message, finish_reason=reply.finish_reason)],
        usage=wire_usage(reply.usage),
        system_fingerprint=SYSTEM_FINGERPRINT,
    )


def call_start_delta(event: ToolCallStart) -> Delta:
    """A call's first delta: index, id, type and name (and ``arguments: ""``)."""
    first = ChunkToolCall(
        index=event.index,
        id=event.id,
        type="function",
        function=ChunkFunctionCall(name=event.name, arguments=""),
    )
    return Delta(tool_calls=[first])


def call_arguments_delta(event: ToolCallArguments) -> Delta:
    piece = ChunkToolCall(index=event.index, function=ChunkFunctionCall(arguments=event.fragment))
    return Delta(tool_calls=[piece])


async def chunk_events(
    stream: EventStream, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """The SSE events of a started stream; closes it when done (or abandoned)."""
    chunk_id = completion_id()
    created = int(time.time())

    def chunk(delta: Delta, finish: FinishReasonName | None = None) -> bytes:
        payload = ChatCompletionChunk(
            id=chunk_id,
            created=created,
            model=model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)],
            system_fingerprint=SYSTEM_FINGERPRINT,
        )
        exclude = None if include_usage else {"usage"}
        return sse_event(payload.model_dump_json(exclude=exclude))

    marker = "picolm-server-content-" + chunk_id
    sample = chunk(Delta(content=marker))[len(b"data: ") : -2].decode("utf-8")
    content_chunk = ContentChunkTemplate(sample, marker).render

    async with stream:
        # A reply that may be only tool calls has no content yet: content null.
        yield chunk(
            Delta(role="assistant") if stream.structured else Delta(role="assistant", content="")
        )
        finish: Finish | None = None
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    yield content_chunk(event.text)
                elif isinstance(event, ToolCallStart):
                    yield chunk(call_start_delta(event))
                elif isinstance(event, ToolCallArguments):
                    yield chunk(call_arguments_delta(event))
                elif isinstance(event, Finish):
                    finish = event
        except APIError as exc:
            # The 200 and earlier chunks are already sent: report in-band, then end.
            yield sse_event(json.dumps(openai_body(exc)))
            if ends_stream_with_done(exc):
                yield DONE_EVENT
            return
        assert finish is not None
        yield chunk(Delta(), finish.reason)
        if include_usage:
            usage_chunk = ChatCompletionChunk(
                id=chunk_id,
                created=created,
                model=model,
                choices=[],
                system_fingerprint=SYSTEM_FINGERPRINT,
                usage=wire_usage(finish.usage),
            )
            yield sse_event(usage_chunk.model_dump_json())
        yield DONE_EVENT
