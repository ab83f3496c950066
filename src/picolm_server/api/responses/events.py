"""A response built from a generation's text and calls, with the stream events that
tell a client about it, in the order and shapes of OpenAI's Responses streaming.

:class:`ResponseWriter` is pure: each method takes what the generation produced and
returns the events it makes (each with the next ``sequence_number``), and keeps
:attr:`ResponseWriter.response` up to date. A non-streamed response is written the same
way, with the events dropped, so both carry the same output.

The order, for a text reply: ``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta`` ..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, then
``response.completed`` (``response.incomplete`` when max_output_tokens cut it). A call:
``response.output_item.added``, ``response.function_call_arguments.delta`` ...,
``response.function_call_arguments.done``, ``response.output_item.done``. A failure
after the stream began: ``error`` then ``response.failed``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ...errors import APIError
from ...http.sse import named_event
from .convert import new_id
from .types import (
    FunctionCall,
    IncompleteDetails,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponseUsage,
)

Event = dict[str, Any]


def sse(event: Event) -> bytes:
    """One server-sent event, named by its type as OpenAI's are."""
    return named_event(event["type"], json.dumps(event, ensure_ascii=False))


def response_json(response: ResponseObject) -> dict[str, Any]:
    return response.model_dump(mode="json", by_alias=True)


class ResponseWriter:
    """The response being generated, and the events of each step."""

    def __init__(self, response: ResponseObject) -> None:
        self.response = response
        self._sequence = 0
        self._message: OutputMessage | None = None  # the message text is going into
        self._call: FunctionCall | None = None  # the call arguments are going into

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return event

    def _snapshot(self, kind: str) -> Event:
        return self._event(kind, response=response_json(self.response))

    def start(self) -> list[Event]:
        return [self._snapshot("response.created"), self._snapshot("response.in_progress")]

    def _open_message(self) -> list[Event]:
        message = OutputMessage(
            id=new_id("msg"), status="in_progress", content=[OutputText(text="")]
        )
        self._message = message
        index = len(self.response.output)
        self.response.output.append(message)
        added = message.model_copy(update={"content": []})
        return [
            self._event("response.output_item.added", output_index=index, item=added.model_dump()),
            self._event(
                "response.content_part.added",
                item_id=message.id,
                output_index=index,
                content_index=0,
                part=OutputText(text="").model_dump(),
            ),
        ]

    def text(self, piece: str) -> list[Event]:
        """Reply text as it arrives."""
        events = self._open_message() if self._message is None else []
        assert self._message is not None
        part = self._message.content[0]
        part.text += piece
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=self._message.id,
                output_index=len(self.response.output) - 1,
                content_index=0,
                delta=piece,
                logprobs=[],
            )
        )
        return events

    def _close_message(self, status: str) -> list[Event]:
        message = self._message
        if message is None:
            return []
        self._message = None
        message.status = "completed" if status == "completed" else "incomplete"
        index = self.response.output.index(message)
        part = message.content[0]
        return [
            self._event(
                "response.output_text.done",
                item_id=message.id,
                output_index=index,
                content_index=0,
                text=part.text,
                logprobs=[],
            ),
            self._event(
                "response.content_part.done",
                item_id=message.id,
                output_index=index,
                content_index=0,
                part=part.model_dump(),
            ),
            self._event("response.output_item.done", output_index=index, item=message.model_dump()),
        ]

    def call_start(self, call_id: str, name: str) -> list[Event]:
        """A function call begins (its arguments follow in pieces)."""
        events = self._close_message("completed")
        call = FunctionCall(
            id=new_id("fc"), call_id=call_id, name=name, arguments="", status="in_progress"
        )
        self._call = call
        events.append(
            self._event(
                "response.output_item.added",
                output_index=len(self.response.output),
                item=call.model_dump(),
            )
        )
        self.response.output.append(call)
        return events

    def call_arguments(self, fragment: str) -> list[Event]:
        """A piece of the open call's arguments."""
        call = self._open_call()
        call.arguments += fragment
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=call.id,
                output_index=len(self.response.output) - 1,
                delta=fragment,
            )
        ]

    def call_done(self, arguments: str) -> list[Event]:
        """The open call is complete; ``arguments`` is the whole of its pieces."""
        call = self._open_call()
        self._call = None
        call.arguments = arguments
        call.status = "completed"
        index = len(self.response.output) - 1
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=call.id,
                name=call.name,
                output_index=index,
                arguments=arguments,
            ),
            self._event("response.output_item.done", output_index=index, item=call.model_dump()),
        ]

    def _open_call(self) -> FunctionCall:
        if self._call is None:
            raise ValueError("no function call is open")
        return self._call

    def call(self, call_id: str, name: str, arguments: str, fragments: list[str]) -> list[Event]:
        """A whole function call, its arguments sent as ``fragments`` (they join to them)."""
        events = self.call_start(call_id, name)
        for fragment in fragments:
            events += self.call_arguments(fragment)
        return events + self.call_done(arguments)

    def finish(self, cut_by_max_tokens: bool, usage: ResponseUsage) -> list[Event]:
        """The generation ended: close what is open and complete the response. A reply
        with neither text nor calls is one empty message, as clients read a message."""
        events = self._open_message() if not self.response.output else []
        status = "incomplete" if cut_by_max_tokens else "completed"
        events += self._close_message(status)
        self.response.usage = usage
        if cut_by_max_tokens:
            self.response.status = "incomplete"
            self.response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
            events.append(self._snapshot("response.incomplete"))
        else:
            self.response.status = "completed"
            self.response.completed_at = int(time.time())
            events.append(self._snapshot("response.completed"))
        return events

    def fail(self, error: APIError) -> list[Event]:
        """The generation failed after the stream began: say why, then that it failed."""
        events = [self._event("error", code=error.code, message=error.message, param=error.param)]
        for item in (self._message, self._call):
            if item is not None:
                item.status = "incomplete"
        self._message = self._call = None
        self.response.status = "failed"
        self.response.error = ResponseError(code="server_error", message=error.message)
        events.append(self._snapshot("response.failed"))
        return events
