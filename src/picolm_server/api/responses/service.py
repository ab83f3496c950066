"""Serving a Responses request: the conversation it continues, a generation for it
by the core, the response written from the core's events, and the store.

The request is reduced to a :class:`~picolm_server.generation.GenerationSpec`
(:mod:`.convert`); the core's events are written as the response and its stream events
(:mod:`.events`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ...errors import APIError, NotFoundError
from ...generation import (
    EventStream,
    Finish,
    GenerationCore,
    TextDelta,
    ToolCallArguments,
    ToolCallDone,
    ToolCallStart,
)
from ...observability.observation import NO_OBSERVER, GenerationObserver
from .convert import Item, generation_spec, initial_response, input_items, refuse_unsupported
from .events import Event, ResponseWriter, response_json, sse
from .store import ResponseStore, StoredResponse, StoreUnavailableError
from .types import ResponseObject, ResponsesRequest, ResponseUsage

logger = logging.getLogger("picolm_server.responses")


class ResponseNotFoundError(NotFoundError):
    default_code = "response_not_found"

    def __init__(self, response_id: str) -> None:
        super().__init__(f"Response with id '{response_id}' not found.", param="response_id")


class PreviousResponseNotFoundError(NotFoundError):
    default_code = "previous_response_not_found"

    def __init__(self, response_id: str) -> None:
        super().__init__(
            f"Previous response with id '{response_id}' not found. Only responses created "
            "with store enabled (the default) can be continued.",
            param="previous_response_id",
        )


@dataclass
class ResponsesService:
    core: GenerationCore
    store: ResponseStore

    async def stored(self, response_id: str) -> StoredResponse:
        found = await self.store.get(response_id)
        if found is None:
            raise ResponseNotFoundError(response_id)
        return found

    async def delete(self, response_id: str) -> None:
        if not await self.store.delete(response_id):
            raise ResponseNotFoundError(response_id)

    async def _conversation(self, request: ResponsesRequest) -> tuple[list[Item], list[str]]:
        """Every item the reply follows, and the parameter each came from."""
        items: list[Item] = []
        params: list[str] = []
        if request.previous_response_id is not None:
            previous = await self.store.get(request.previous_response_id)
            if previous is None:
                raise PreviousResponseNotFoundError(request.previous_response_id)
            history = [*previous.context, *previous.response.get("output", [])]
            items += history
            params += ["previous_response_id"] * len(history)
        new = input_items(request)
        items += new
        if isinstance(request.input, str):
            params.append("input")
        else:
            params += [f"input[{index}]" for index in range(len(new))]
        return items, params

    async def _open(
        self, request: ResponsesRequest, observer: GenerationObserver
    ) -> tuple[EventStream, ResponseWriter, list[Item]]:
        """Check, convert and start the generation: every error before its first token
        (4xx, a full queue, a prompt that does not fit) is raised here."""
        core = self.core.accept(request.model, observer)
        refuse_unsupported(request)
        items, params = await self._conversation(request)
        spec = generation_spec(request, items, params)
        stream = await core.open(spec, observer)
        response = initial_response(request, core.defaults, core.model_id)
        return stream, ResponseWriter(response), items

    async def _events(
        self, stream: EventStream, writer: ResponseWriter, context: list[Item]
    ) -> AsyncIterator[Event]:
        """The events of a started generation after the first two, up to and including
        the final one (the response is stored before that one is given)."""
        async for event in stream:
            if isinstance(event, TextDelta):
                events = writer.text(event.text) if event.text else []
            elif isinstance(event, ToolCallStart):
                events = writer.call_start(event.id, event.name)
            elif isinstance(event, ToolCallArguments):
                events = writer.call_arguments(event.fragment)
            elif isinstance(event, ToolCallDone):
                events = writer.call_done(event.arguments)
            else:
                assert isinstance(event, Finish)
                usage = ResponseUsage.of(
                    event.usage.prompt_tokens,
                    event.usage.completion_tokens,
                    event.usage.cached_tokens,
                )
                events = writer.finish(event.reason == "length", usage)
                await self._save(writer.response, context)
            for out in events:
                yield out

    async def _save(self, response: ResponseObject, context: list[Item]) -> None:
        if not response.store:
            return
        try:
            await self.store.save(response_json(response), context)
        except StoreUnavailableError:
            # The reply is still the client's; only a later GET or continuation misses it.
            logger.warning("response %s was not stored", response.id)

    async def create(
        self, request: ResponsesRequest, observer: GenerationObserver = NO_OBSERVER
    ) -> ResponseObject:
        stream, writer, context = await self._open(request, observer)
        async with stream:
            async for _ in self._events(stream, writer, context):
                pass
        return writer.response

    async def open_stream(
        self, request: ResponsesRequest, observer: GenerationObserver = NO_OBSERVER
    ) -> AsyncIterator[bytes]:
        """Start a streamed response: errors before the generation starts raise here (the
        route still answers with their status); the returned iterator yields the events
        and owns the generation until it is closed."""
        stream, writer, context = await self._open(request, observer)
        return self._stream(stream, writer, context)

    async def _stream(
        self, stream: EventStream, writer: ResponseWriter, context: list[Item]
    ) -> AsyncIterator[bytes]:
        async with stream:
            for event in writer.start():
                yield sse(event)
            try:
                async for event in self._events(stream, writer, context):
                    yield sse(event)
            except APIError as exc:
                # The 200 and earlier events are already sent: report in-band, then end.
                for event in writer.fail(exc):
                    yield sse(event)
