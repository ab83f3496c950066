"""Reading the generated text, streamed or whole, into content and tool calls, each
parsed and validated against its schema before it is released."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from .json_close import JSONCloser
from .json_stream import JSONPieces
from .plan import CALL_CLOSE, CALL_OPEN, InvalidModelOutputError, OutputPlan, ToolSpec
from .schemas import validator


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")[:24]


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    arguments: str  # compact JSON text of an object that matches the tool's schema


@dataclass(frozen=True)
class ContentPiece:
    text: str


ReplyEvent = ContentPiece | ParsedCall


def schema_error(schema: dict[str, Any], instance: Any) -> str | None:
    """Why ``instance`` does not match ``schema``, or None when it does."""
    import jsonschema.exceptions  # loaded with the first schema (schemas.py)

    try:
        error = jsonschema.exceptions.best_match(validator(schema).iter_errors(instance))
    except RecursionError:
        # A recursive schema (a tree) and a model output nested deeper than Python's
        # stack: the output cannot be checked, so it is not valid.
        return "the output is nested too deeply to be checked"
    if error is None:
        return None
    where = "".join(f"[{part!r}]" for part in error.absolute_path)
    return f"{error.message}" + (f" (at arguments{where})" if where else "")


def _arguments_text(arguments: Any) -> str:
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


@dataclass
class _Failure:
    message: str


def _decode_json(text: str) -> tuple[Any, str] | _Failure:
    """The first JSON value in ``text`` (after whitespace) and what follows it."""
    stripped = text.lstrip()
    try:
        value, end = json.JSONDecoder(strict=False).raw_decode(stripped)
    except json.JSONDecodeError as exc:
        return _Failure(f"the output is not valid JSON ({exc.msg} at character {exc.pos})")
    return value, stripped[end:]


class ReplyDecoder:
    """Turns generated text into content and validated tool calls, piece by piece.

    A reply is a tool-call reply only if it starts with a call (``<tool_call>`` in the
    Hermes format, ``{`` in the JSON format): then nothing of it is ever sent as content,
    and each call is released only once it is complete, parsed and valid (with a grammar
    engine as soon as its block closes; otherwise at the end, when the whole reply is
    known). In ``auto`` mode a reply that does not start with a call streams as content,
    and so does a JSON reply (``response_format``) once it is known not to be a call:
    in pieces as it is generated, checked against its schema at the end. Without a
    grammar, in ``auto`` mode, a call-shaped reply that fails to parse or validate is
    returned as content. In the other modes a failure raises
    :class:`InvalidModelOutputError` saying what failed.
    """

    def __init__(self, plan: OutputPlan) -> None:
        self.plan = plan
        self.calls: list[ParsedCall] = []
        self.content: str | None = None
        # Set when the model repeats a call it has already made in this reply: small
        # models loop on parallel calls, and nothing after a repeat is worth reading.
        self.done = False
        self._buffer = ""
        self._state: Literal["undecided", "content", "calls", "json"] = "undecided"
        if plan.mode in ("required", "named"):
            self._state = "calls"
        elif plan.mode == "json":
            self._state = "json"
        self._marker = CALL_OPEN if plan.call_format == "hermes" else "{"
        # A JSON reply's text released so far (see json_stream); a json_object reply
        # under a grammar is released by the rules that always end it (json_close).
        self._json = JSONPieces()
        self._json_sent = ""
        self._closer = JSONCloser() if plan.free_json_object and plan.grammar_engine else None
        # The reply was ended or completed by those rules (it ends with "stop").
        self.closed_by_rule = False

    # -- feeding --

    def feed(self, text: str) -> list[ReplyEvent]:
        if not text:
            return []
        if self._state == "content":
            return self._content(text)
        self._buffer += text
        if self._state == "undecided":
            head = self._buffer.lstrip()
            if not head or (len(head) < len(self._marker) and self._marker.startswith(head)):
                return []  # could still be the start of a call
            if head.startswith(self._marker):
                self._state = "calls"
            elif self.plan.response_schema is not None:
                # auto with a JSON reply format: streamed, then checked.
                self._state = "json"
                return self._json_pieces(self._buffer)
            else:
                self._state = "content"
                buffered, self._buffer = self._buffer, ""
                return self._content(buffered)
        if self._state == "calls" and self._incremental:
            return self._release_complete_calls()
        if self._state == "json":
            return self._json_pieces(text)
        return []

    def _json_pieces(self, text: str) -> list[ReplyEvent]:
        if self._closer is not None:
            released = self._closer.feed(text)
            self.done = self._closer.repeated
        else:
            released = self._json.feed(text)
        if not released:
            return []
        self._json_sent += released
        return self._content(released)

    @property
    def _incremental(self) -> bool:
        """Whether calls may be released one by one as they complete: only when a grammar
        guarantees their shape, and the reply cannot also be a JSON text reply."""
        plan = self.plan
        if not plan.grammar_engine or plan.arguments_only:
            return False
        return not (plan.call_format == "json" and plan.response_schema is not None)

    def _content(self, text: str) -> list[ReplyEvent]:
        self.content = (self.content or "") + text
        return [ContentPiece(text)]

    def _release_complete_calls(self) -> list[ReplyEvent]:
        """Grammar engines: release each call as soon as it is complete (and valid)."""
        events: list[ReplyEvent] = []
        while not self.done:
            block = self._next_block(final=False)
            if block is None:
                break
            call = self._parse_call(block)
            if isinstance(call, _Failure):
                raise self._error(call.message)
            if self._is_repeat(call):
                self.done = True
                self._buffer = ""
                break
            self.calls.append(call)
            events.append(call)
        return events

    def _is_repeat(self, call: ParsedCall) -> bool:
        return any(
            (earlier.name, earlier.arguments) == (call.name, call.arguments)
            for earlier in self.calls
        )

    def _next_block(self, *, final: bool) -> str | None:
        """Cut the next complete call's text off the buffer; ``final``: max_tokens ended
        the reply, and a call missing only its closing marker counts as complete."""
        text = self._buffer.lstrip()
        if self.plan.call_format == "hermes":
            if not text.startswith(CALL_OPEN):
                return None
            end = text.find(CALL_CLOSE)
            if end < 0:
                return self._unclosed_block(text) if final else None
            self._buffer = text[end + len(CALL_CLOSE) :]
            return text[len(CALL_OPEN) : end]
        if not text.startswith("{"):
            return None
        decoded = _decode_json(text)
        if isinstance(decoded, _Failure):
            return None
        _value, rest = decoded
        consumed = text[: len(text) - len(rest)]
        self._buffer = rest
        return consumed

    def _unclosed_block(self, text: str) -> str | None:
        """At the end of the reply: a call whose JSON is whole but whose closing marker
        never came (max_tokens ran out just before it) is a complete call."""
        body = text[len(CALL_OPEN) :]
        decoded = _decode_json(body)
        if isinstance(decoded, _Failure) or decoded[1].strip():
            return None
        self._buffer = ""
        return body

    # -- finishing --

    def finish(self, finish_reason: str) -> list[ReplyEvent]:
        """The generation ended: release what is left or fail."""
        truncated = finish_reason == "length" and not self.done
        if self._state == "content":
            return []
        if self._state == "undecided":
            # Ended while it could still have been a call (e.g. only "<tool").
            buffered, self._buffer = self._buffer, ""
            if not buffered.strip():
                return []
            return self._content(buffered)
        if self._state == "json":
            return self._finish_json(truncated)
        return self._finish_calls(truncated)

    def _finish_json(self, truncated: bool) -> list[ReplyEvent]:
        text, self._buffer = self._buffer.strip(), ""
        if self._closer is not None and (truncated or self.done):
            text = self._closer.closed()
            truncated = False
            self.closed_by_rule = True
        # What was streamed is a prefix of the stripped reply: the rest is still to send.
        unsent = text[len(self._json_sent) :]
        schema = self.plan.response_schema or {"type": "object"}
        if truncated:
            # As OpenAI does: a reply cut off by max_tokens is returned as it is, with
            # finish_reason "length"; the client must check it.
            return self._content(unsent) if unsent else []
        decoded = _decode_json(text)
        if isinstance(decoded, _Failure):
            raise self._json_error(decoded.message)
        value, rest = decoded
        if rest.strip():
            raise self._json_error("the output has text after the JSON value")
        problem = schema_error(schema, value)
        if problem is not None:
            raise self._json_error(f"the output does not match the schema: {problem}")
        return self._content(unsent) if unsent else []

    def _json_error(self, what: str) -> InvalidModelOutputError:
        return InvalidModelOutputError(
            f"The model did not produce a valid JSON reply for response_format: {what}."
        )

    def _finish_calls(self, truncated: bool) -> list[ReplyEvent]:
        events: list[ReplyEvent] = []
        raw = self._buffer
        if self.plan.arguments_only:
            self._buffer = ""
            if truncated and not raw.strip():
                return []
            call = self._parse_arguments(self.plan.tools[0], raw, truncated)
            if isinstance(call, _Failure):
                raise self._error(call.message, retryable=not truncated)
            self.calls.append(call)
            return [call]
        pending: list[ParsedCall] = []
        failure: _Failure | None = None
        while True:
            block = self._next_block(final=truncated)
            if block is None:
                break
            call = self._parse_call(block)
            if isinstance(call, _Failure):
                failure = call
                break
            if self._is_repeat(call) or any(
                (p.name, p.arguments) == (call.name, call.arguments) for p in pending
            ):
                self._buffer = ""
                break
            pending.append(call)
        leftover = self._buffer.strip()
        self._buffer = ""
        if failure is None and leftover and not truncated:
            failure = self._describe_leftover(leftover)
        if failure is not None and not self.calls and self.plan.mode == "auto":
            if self.plan.response_schema is not None and not raw.lstrip().startswith(CALL_OPEN):
                # A JSON reply, not a call (both start with "{" in the JSON format).
                self._buffer = raw
                return self._finish_json(truncated)
            if not self.plan.grammar_engine:
                # auto without a grammar: a reply that looked like a call but is not a
                # valid one is the model's text reply.
                return self._content(raw.strip())
        if failure is not None:
            raise self._error(failure.message)
        if not self.calls and not pending:
            if truncated:
                raise self._error(
                    "the reply was cut off by max_tokens before the first tool call was "
                    "complete; raise max_tokens",
                    retryable=False,
                )
            raise self._error("the output holds no tool call")
        self.calls.extend(pending)
        events.extend(pending)
        return events

    def _describe_leftover(self, leftover: str) -> _Failure:
        if self.plan.call_format == "hermes" and leftover.startswith(CALL_OPEN):
            return _Failure(f"a {CALL_OPEN} block is not closed with {CALL_CLOSE}")
        if not leftover.startswith(self._marker):
            if self.plan.call_format == "json":
                return _Failure(f"the output is not valid JSON: {leftover[:80]!r}")
            return _Failure(f"the output holds no tool call: {leftover[:80]!r}")
        decoded = _decode_json(leftover)
        if isinstance(decoded, _Failure):
            return decoded
        return _Failure(f"the output is not a tool call: {leftover[:80]!r}")

    def _parse_call(self, block: str) -> ParsedCall | _Failure:
        decoded = _decode_json(block)
        if isinstance(decoded, _Failure):
            return decoded
        value, rest = decoded
        if rest.strip():
            return _Failure("a tool call has text after its JSON object")
        if not isinstance(value, dict):
            return _Failure("a tool call is not a JSON object")
        name = value.get("name")
        if not isinstance(name, str):
            return _Failure('a tool call has no "name" string')
        tool = self.plan.tool(name)
        if tool is None:
            allowed = ", ".join(t.name for t in self.plan.tools)
            return _Failure(
                f"the model called {name!r}, which is not an allowed function ({allowed})"
            )
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return _Failure(f"the arguments of {name!r} are not valid JSON")
        return self._checked(tool, arguments)

    def _parse_arguments(self, tool: ToolSpec, raw: str, truncated: bool) -> ParsedCall | _Failure:
        if truncated:
            return _Failure(
                "the reply was cut off by max_tokens before the arguments were complete; "
                "raise max_tokens"
            )
        decoded = _decode_json(raw)
        if isinstance(decoded, _Failure):
            return _Failure(f"the arguments of {tool.name!r}: {decoded.message}")
        value, rest = decoded
        if rest.strip():
            return _Failure(f"the arguments of {tool.name!r} are followed by other text")
        return self._checked(tool, value)

    def _checked(self, tool: ToolSpec, arguments: Any) -> ParsedCall | _Failure:
        if not isinstance(arguments, dict):
            return _Failure(f"the arguments of {tool.name!r} are not a JSON object")
        problem = schema_error(tool.parameters, arguments)
        if problem is not None:
            return _Failure(
                f"the arguments of {tool.name!r} do not match its parameters schema: {problem}"
            )
        return ParsedCall(new_call_id(), tool.name, _arguments_text(arguments))

    def _error(self, what: str, *, retryable: bool = True) -> InvalidModelOutputError:
        error = InvalidModelOutputError(f"The model did not produce a valid tool call: {what}.")
        error.retryable = retryable
        return error


# ---- streaming helpers --------------------------------------------------------------------


def argument_fragments(arguments: str, size: int = 24) -> list[str]:
    """The arguments text in pieces, as a stream sends them; they join to the whole."""
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]
