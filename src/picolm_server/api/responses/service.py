"""Serving a Responses request: the conversation it continues, a chat generation for
it, the response written from what the generation yields, and the store.

The generation itself is the chat service's (templates, tools and tool choice, JSON
output, stop strings, limits): a Responses request is converted to the chat request it
amounts to (:mod:`.convert`), and what the generation yields is written as a response
and its stream events (:mod:`.events`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import anyio

from ...errors import APIError, InvalidRequestError, NotFoundError
from ...observation import NO_OBSERVER, GenerationObserver
from ...serving import ChatService, Generation
from ...tool_calls import ContentPiece, argument_fragments
from .convert import Item, chat_request, initial_response, input_items, refuse_unsupported
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
class Prepared:
    """A request ready to run: its generation, the writer of its response, and the
    conversation it was generated from (what the store keeps with it)."""

    generation: Generation
    writer: ResponseWriter
    context: list[Item]


@dataclass
class ResponsesService:
    chat: ChatService
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

    async def prepare(
        self, request: ResponsesRequest, observer: GenerationObserver = NO_OBSERVER
    ) -> Prepared:
        """Validate and convert; raises 4xx errors before any engine work."""
        refuse_unsupported(request)
        items, params = await self._conversation(request)
        chat, names = chat_request(request, items, params)
        try:
            generation = self.chat.prepare(chat, observer)
        except InvalidRequestError as exc:
            exc.param = names.translate(exc.param)
            raise
        response = initial_response(request, self.chat.defaults, self.chat.model_id)
        return Prepared(generation, ResponseWriter(response), items)

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """A scheduler slot, whose wait ends when a shutdown drain does."""
        slot = self.chat.scheduler.slot()
        with self.chat.drain.guard():
            await slot.__aenter__()
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await slot.__aexit__(None, None, None)

    async def _generate(self, prepared: Prepared) -> AsyncIterator[Event]:
        """The events of a started generation, up to and including the final one (the
        response is stored before that one is given)."""
        generation, writer = prepared.generation, prepared.writer
        if generation.plan is None:
            async for piece in generation.text():
                for event in writer.text(piece) if piece else []:
                    yield event
        else:
            async for reply in generation.replies():
                if isinstance(reply, ContentPiece):
                    events = writer.text(reply.text) if reply.text else []
                else:
                    fragments = argument_fragments(reply.arguments)
                    events = writer.call(reply.id, reply.name, reply.arguments, fragments)
                for event in events:
                    yield event
        outcome = generation.outcome
        usage = ResponseUsage.of(
            outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens
        )
        final = writer.finish(outcome.finish_reason == "length", usage)
        await self._save(writer.response, prepared.context)
        for event in final:
            yield event

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
        prepared = await self.prepare(request, observer)
        generation = prepared.generation
        await generation.admit()
        async with self._slot():
            try:
                await generation.start()
                async for _ in self._generate(prepared):
                    pass
            finally:
                await generation.close()
        return prepared.writer.response

    async def open_stream(
        self, request: ResponsesRequest, observer: GenerationObserver = NO_OBSERVER
    ) -> AsyncIterator[bytes]:
        """Start a streamed response: errors before the generation starts raise here (the
        route still answers with their status); the returned iterator yields the events
        and owns the slot and the engine until it is closed."""
        prepared = await self.prepare(request, observer)
        generation = prepared.generation
        await generation.admit()
        slot = self._slot()
        await slot.__aenter__()
        try:
            await generation.start()
        except BaseException:
            await generation.close()
            await slot.__aexit__(None, None, None)
            raise
        return self._stream(prepared, slot)

    async def _stream(
        self, prepared: Prepared, slot: AbstractAsyncContextManager[None]
    ) -> AsyncIterator[bytes]:
        writer = prepared.writer
        try:
            for event in writer.start():
                yield sse(event)
            try:
                async for event in self._generate(prepared):
                    yield sse(event)
            except APIError as exc:
                # The 200 and earlier events are already sent: report in-band, then end.
                for event in writer.fail(exc):
                    yield sse(event)
        finally:
            try:
                await prepared.generation.close()
            finally:
                await slot.__aexit__(None, None, None)
