"""Chat-completion serving: OpenAI request in, engine generation, OpenAI response out.

The conversions (messages to template input, request to engine parameters, events to
response objects) are pure functions, tested without HTTP. :class:`ChatService` puts
them together with the scheduler, stop strings and the time limit; the routes only hand
it parsed requests.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from .chat_template import ChatTemplate
from .config import GenerationDefaults
from .drain import Drain, ends_stream_with_done
from .engines.base import (
    Engine,
    Finished,
    GenerationEvent,
    GenerationRequest,
    OutputConstraint,
    PromptAccepted,
    TextDelta,
)
from .errors import (
    APIError,
    EngineError,
    EngineTimeoutError,
    InvalidRequestError,
    ModelNotFoundError,
)
from .observation import NO_OBSERVER, GenerationObserver
from .protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    ChunkFunctionCall,
    ChunkToolCall,
    Delta,
    FinishReasonName,
    ResponseFunctionCall,
    ResponseMessage,
    ResponseToolCall,
    Usage,
)
from .scheduler import Scheduler
from .streaming import DONE_EVENT, ContentChunkTemplate, StopScanner, sse_event
from .tool_calls import (
    ContentPiece,
    InvalidModelOutputError,
    OutputPlan,
    ParsedCall,
    ReplyDecoder,
    ReplyEvent,
    argument_fragments,
    build_grammar,
    is_hermes_template,
    make_plan,
    prompt_messages,
)
from .tool_calls.reply_schema import reply_schema

SYSTEM_FINGERPRINT = "fp_picolm_server"

logger = logging.getLogger("picolm_server")


# ---- pure conversions ----------------------------------------------------------------


def refuse_unsupported(request: ChatCompletionRequest) -> None:
    """Refuse parameters whose silent omission would mislead the client.

    Parameters with no effect on a local model (``user``, ``store``, ``metadata``,
    ``service_tier``, penalties, ...) are accepted and ignored.
    """
    if request.n is not None and request.n > 1:
        raise InvalidRequestError(
            "n > 1 is not supported: this server generates one choice per request.", param="n"
        )
    if request.logprobs:
        raise InvalidRequestError("logprobs are not supported by this server.", param="logprobs")
    if request.top_logprobs:
        raise InvalidRequestError(
            "top_logprobs is not supported by this server.", param="top_logprobs"
        )
    extra = request.model_extra or {}
    modalities = extra.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise InvalidRequestError("Only the text modality is supported.", param="modalities")
    if extra.get("audio") is not None:
        raise InvalidRequestError("Audio output is not supported.", param="audio")
    if extra.get("functions") or extra.get("function_call"):
        raise InvalidRequestError(
            "The deprecated functions/function_call parameters are not supported; use tools.",
            param="functions",
        )
    if extra.get("web_search_options") is not None:
        raise InvalidRequestError("Web search is not supported.", param="web_search_options")


def message_text(message: ChatMessage, index: int) -> str:
    """The text of a message; an array of text parts is joined with newlines."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part_index, part in enumerate(content):
        if part.type == "text":
            if part.text is None:
                raise InvalidRequestError(
                    f"messages[{index}].content[{part_index}].text is required for a text part.",
                    param=f"messages[{index}].content[{part_index}].text",
                )
            texts.append(part.text)
        elif part.type == "refusal" and message.role == "assistant":
            texts.append(str((part.model_extra or {}).get("refusal", "")))
        else:
            raise InvalidRequestError(
                f"messages[{index}].content[{part_index}]: content of type {part.type!r} is "
                "not supported; only text is.",
                param=f"messages[{index}].content[{part_index}].type",
            )
    return "\n".join(texts)


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them (Hugging Face's conventions).

    ``developer`` is OpenAI's new name for ``system``; tool-call arguments are handed to
    the template as objects, which is what templates that render them are written for.
    """
    converted: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        if role == "function":
            role = "tool"
        if role in ("system", "user") and message.content is None:
            raise InvalidRequestError(
                f"messages[{index}].content is required for role {message.role!r}.",
                param=f"messages[{index}].content",
            )
        if role == "tool" and message.role == "tool" and not message.tool_call_id:
            raise InvalidRequestError(
                f"messages[{index}].tool_call_id is required for role 'tool'.",
                param=f"messages[{index}].tool_call_id",
            )
        entry: dict[str, Any] = {"role": role, "content": message_text(message, index)}
        if message.name:
            entry["name"] = message.name
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": _arguments_object(call.function.arguments),
                    },
                }
                for call in message.tool_calls
            ]
        converted.append(entry)
    return converted


def _arguments_object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def refuse_nul(request: ChatCompletionRequest, prompt: str) -> None:
    """Refuse a prompt with a NUL character, naming where it is (for engines that would
    end the prompt there, see ``Engine.prompt_accepts_nul``)."""
    if "\0" not in prompt:
        return
    param = None
    for index, message in enumerate(request.messages):
        content = message.content
        if isinstance(content, str) and "\0" in content:
            param = f"messages[{index}].content"
        elif isinstance(content, list):
            for part_index, part in enumerate(content):
                if "\0" in (part.text or ""):
                    param = f"messages[{index}].content[{part_index}].text"
                    break
        if param is None and "\\u0000" in message.model_dump_json():
            param = f"messages[{index}]"
        if param is not None:
            break
    if param is None:
        param = "tools" if request.tools else "response_format"
    raise InvalidRequestError(
        f"{param} contains a NUL character (\\u0000), which this model's engine cannot "
        "take: it would end the prompt there.",
        param=param,
    )


def stop_strings(request: ChatCompletionRequest, template: ChatTemplate) -> list[str]:
    requested = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    return [*requested, *template.stop_strings]


def generation_request(
    request: ChatCompletionRequest,
    prompt: str,
    defaults: GenerationDefaults,
    constraint: OutputConstraint | None = None,
) -> GenerationRequest:
    max_tokens = request.max_completion_tokens or request.max_tokens or defaults.max_tokens
    temperature = defaults.temperature if request.temperature is None else request.temperature
    top_p = defaults.top_p if request.top_p is None else request.top_p
    seed = request.seed if request.seed is not None else random.randrange(2**31)
    return GenerationRequest(
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=max(top_p, 1e-6),
        seed=seed,
        constraint=constraint,
    )


def shared_prefix(
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    prompt: str,
) -> str | None:
    """The prompt text of the leading system messages (and tools), which conversations of
    one application share, when it is a text prefix of ``prompt`` (engines may keep its
    computed state); None when there is none."""
    count = 0
    while count < len(messages) and messages[count].get("role") == "system":
        count += 1
    if not count and not tools:
        return None
    try:
        text = template.render(messages[:count], tools=tools, add_generation_prompt=False)
    except InvalidRequestError:  # e.g. a template that insists on a user message
        return None
    return text if text and len(text) < len(prompt) and prompt.startswith(text) else None


def engine_accepts_grammar(engine: Engine) -> bool:
    """Whether the engine enforces a GBNF grammar (llama.cpp), or holds replies to a
    schema (or only to balanced JSON) without one (PicoLM)."""
    return engine.output_control == "grammar"


def output_constraint(plan: OutputPlan | None, engine: Engine) -> OutputConstraint | None:
    """The engine constraint for a plan: a grammar for grammar engines; for the others
    JSON mode whenever the reply must be JSON (not for ``auto``, where it may be text)."""
    if plan is None:
        return None
    if plan.grammar_engine:
        grammar = build_grammar(plan)
        check: Callable[[str], str | None] | None = getattr(engine, "grammar_error", None)
        problem = check(grammar.gbnf) if check is not None else None
        if problem is not None:
            # A schema the converter got wrong: keep the call's shape, validate the rest.
            logger.warning("falling back to a JSON-object grammar: %s", problem)
            grammar = build_grammar(plan, exact_schemas=False)
        return OutputConstraint(json_schema=plan.response_schema, gbnf=grammar.gbnf)
    if plan.uses_json_mode:
        return OutputConstraint(json_schema=reply_schema(plan))
    return None


def response_tool_calls(calls: list[ParsedCall]) -> list[ResponseToolCall]:
    return [
        ResponseToolCall(
            id=call.id, function=ResponseFunctionCall(name=call.name, arguments=call.arguments)
        )
        for call in calls
    ]


def call_deltas(call: ParsedCall, index: int) -> list[Delta]:
    """A call as stream deltas: index, id, type and name first, then argument fragments."""
    first = ChunkToolCall(
        index=index,
        id=call.id,
        type="function",
        function=ChunkFunctionCall(name=call.name, arguments=""),
    )
    deltas = [Delta(tool_calls=[first])]
    for fragment in argument_fragments(call.arguments):
        piece = ChunkToolCall(index=index, function=ChunkFunctionCall(arguments=fragment))
        deltas.append(Delta(tool_calls=[piece]))
    return deltas


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


# ---- one generation with the server's rules applied --------------------------------------


@dataclass
class GenerationOutcome:
    """What a finished generation reports after its text."""

    finish_reason: FinishReasonName = "stop"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def usage(self) -> Usage:
        return Usage.of(self.prompt_tokens, self.completion_tokens, self.cached_tokens)


@dataclass
class Generation:
    """An engine generation with stop strings, the leading-space rule and a time limit.

    Call :meth:`start` first (it raises before any text, e.g. for a prompt that does not
    fit), then iterate :meth:`text` and read :attr:`outcome`; always :meth:`close`.
    """

    engine: Engine
    request: GenerationRequest
    stops: list[str]
    timeout_seconds: float
    outcome: GenerationOutcome = field(default_factory=GenerationOutcome)
    # Tools or a JSON response format: the reply text is read by a ReplyDecoder.
    plan: OutputPlan | None = None
    # Server shutdown: ends a wait for the engine once the drain is over.
    drain: Drain = field(default_factory=Drain)
    observer: GenerationObserver = NO_OBSERVER

    def __post_init__(self) -> None:
        self._generator: AsyncGenerator[GenerationEvent, None] | None = None
        # Set again by start(): time spent waiting in the queue is not generation time.
        self._deadline = time.monotonic() + self.timeout_seconds
        self._scanner = StopScanner(self.stops)
        self._at_start = True

    @property
    def _events(self) -> AsyncGenerator[GenerationEvent, None]:
        if self._generator is None:
            self._generator = self.engine.generate(self.request)
        return self._generator

    async def admit(self) -> None:
        """The engine's checks that need no generation slot (the prompt fits): call it
        before waiting for one, so that a request that cannot run never holds a slot."""
        self.request = await self.engine.admit(self.request)

    async def _next_event(self) -> GenerationEvent:
        remaining = self._deadline - time.monotonic()
        try:
            # In this task, not in one of its own as asyncio.wait_for would run it: a
            # cancellation (client gone) then reaches the engine's generator directly, and
            # close() never finds the generator still running in an orphaned task.
            with self.drain.guard(), anyio.fail_after(max(remaining, 0.001)):
                event = await self._events.__anext__()
        except TimeoutError:
            error: APIError = self._timed_out()
        except StopAsyncIteration:
            error = EngineError("The engine ended without finishing the generation.")
        except APIError as exc:
            self.observer.engine_failed(exc)
            raise
        else:
            if time.monotonic() <= self._deadline:
                return event
            # An engine whose events are always ready never lets the timer cancel it.
            error = self._timed_out()
        self.observer.engine_failed(error)
        raise error

    def _timed_out(self) -> EngineTimeoutError:
        return EngineTimeoutError(
            f"The generation did not finish within {self.timeout_seconds:g} seconds."
        )

    async def start(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        event = await self._next_event()
        if not isinstance(event, PromptAccepted):
            raise EngineError("The engine did not report the prompt.")
        self.outcome.prompt_tokens = event.prompt_tokens
        self.outcome.cached_tokens = event.cached_tokens
        self.observer.prompt_accepted(event.prompt_tokens, event.cached_tokens)

    async def text(self) -> AsyncIterator[str]:
        """Reply text as it can be sent: the stop string and anything after it never are."""
        while True:
            event = await self._next_event()
            if isinstance(event, TextDelta):
                if self._at_start:
                    self.observer.first_token()
                self.outcome.completion_tokens = event.completion_tokens
                piece = event.text
                if self._at_start and piece:
                    # Templates end with "...assistant\n" and SentencePiece models start
                    # the reply with a word-initial space: one leading space is not text.
                    piece = piece[1:] if piece.startswith(" ") else piece
                    self._at_start = False
                released = self._scanner.feed(piece)
                if released:
                    yield released
                if self._scanner.stopped:
                    self.outcome.finish_reason = "stop"
                    return
            elif isinstance(event, Finished):
                self.outcome.completion_tokens = event.completion_tokens
                self.outcome.finish_reason = event.reason
                rest = self._scanner.flush()
                if rest:
                    yield rest
                return

    async def replies(self) -> AsyncIterator[ReplyEvent]:
        """Content and tool calls (only with a plan), each call parsed and validated.

        Ends early, with finish_reason ``tool_calls``, when the model starts repeating a
        call; a reply that cannot be what the request demands raises
        :class:`InvalidModelOutputError` (with ``x-should-retry: false`` when sampling is
        greedy or max_tokens cut the reply, where a retry gives the same result)."""
        assert self.plan is not None
        decoder = ReplyDecoder(self.plan)
        try:
            async for piece in self.text():
                for event in decoder.feed(piece):
                    yield event
                if decoder.done:
                    break
            for event in decoder.finish(self.outcome.finish_reason if not decoder.done else "stop"):
                yield event
        except InvalidModelOutputError as exc:
            if self.request.temperature == 0 or not exc.retryable:
                exc.headers = {**exc.headers, "x-should-retry": "false"}
            raise
        if decoder.calls:
            # Complete, valid calls: a call the model was still writing when max_tokens
            # ran out is dropped (never sent), and the reply is the calls made.
            self.outcome.finish_reason = "tool_calls"

    async def close(self) -> None:
        # Shielded: the engine must get to stop its process even when this request's
        # task is being cancelled (client gone, server shutting down).
        if self._generator is None:
            return
        with anyio.CancelScope(shield=True):
            await self._generator.aclose()
        self.observer.generation_ended(self.outcome.completion_tokens)


# ---- the service ------------------------------------------------------------------------


@dataclass
class ChatService:
    engine: Engine
    template: ChatTemplate
    defaults: GenerationDefaults
    scheduler: Scheduler
    drain: Drain = field(default_factory=Drain)

    @property
    def model_id(self) -> str:
        return self.engine.model.id

    def prepare(
        self, request: ChatCompletionRequest, observer: GenerationObserver = NO_OBSERVER
    ) -> Generation:
        """Validate and convert; raises 4xx errors before any engine work."""
        observer.request_parsed(request.model)
        if request.model != self.model_id:
            raise ModelNotFoundError(request.model)
        refuse_unsupported(request)
        grammar_engine = engine_accepts_grammar(self.engine)
        hermes = is_hermes_template(self.template.source)
        plan = make_plan(
            request,
            hermes_template=hermes,
            grammar_engine=grammar_engine,
            max_tokens=self.defaults.max_tokens,
        )
        messages, tools = prompt_messages(
            template_messages(request.messages),
            plan,
            template_renders_tools=self.template.renders_tools,
            call_format="hermes" if hermes and grammar_engine else "json",
        )
        split = self.template.render_split(messages, tools=tools)
        prompt = split.whole
        if not self.engine.prompt_accepts_nul:
            refuse_nul(request, prompt)
        engine_request = generation_request(
            request, prompt, self.defaults, constraint=output_constraint(plan, self.engine)
        )
        prefix = shared_prefix(self.template, messages, tools, prompt)
        return Generation(
            engine=self.engine,
            request=replace(engine_request, shared_prefix=prefix, split_prompt=split),
            stops=stop_strings(request, self.template),
            timeout_seconds=self.defaults.timeout_seconds,
            plan=plan,
            drain=self.drain,
            observer=observer,
        )

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """A scheduler slot, whose wait ends when a shutdown drain does."""
        slot = self.scheduler.slot()
        with self.drain.guard():
            await slot.__aenter__()
        try:
            yield
        finally:
            await slot.__aexit__(None, None, None)

    async def complete(
        self, request: ChatCompletionRequest, observer: GenerationObserver = NO_OBSERVER
    ) -> ChatCompletion:
        generation = self.prepare(request, observer)
        await generation.admit()
        calls: list[ParsedCall] = []
        async with self._slot():
            try:
                await generation.start()
                if generation.plan is None:
                    text = "".join([piece async for piece in generation.text()])
                else:
                    pieces: list[str] = []
                    async for event in generation.replies():
                        if isinstance(event, ContentPiece):
                            pieces.append(event.text)
                        else:
                            calls.append(event)
                    text = "".join(pieces)
            finally:
                await generation.close()
        outcome = generation.outcome
        message = (
            ResponseMessage(content=text or None, tool_calls=response_tool_calls(calls))
            if calls
            else ResponseMessage(content=text)
        )
        return ChatCompletion(
            id=completion_id(),
            created=int(time.time()),
            model=self.model_id,
            choices=[Choice(message=message, finish_reason=outcome.finish_reason)],
            usage=outcome.usage(),
            system_fingerprint=SYSTEM_FINGERPRINT,
        )

    async def open_stream(
        self, request: ChatCompletionRequest, observer: GenerationObserver = NO_OBSERVER
    ) -> AsyncIterator[bytes]:
        """Start a streamed completion: errors before the first token raise here, so the
        route can still answer with a proper status; the returned iterator yields SSE
        events and owns the scheduler slot and the engine until it is closed."""
        generation = self.prepare(request, observer)
        await generation.admit()
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        slot = self._slot()
        await slot.__aenter__()
        try:
            await generation.start()
        except BaseException:
            await generation.close()
            await slot.__aexit__(None, None, None)
            raise
        return self._stream_events(generation, slot, include_usage)

    async def _stream_events(
        self, generation: Generation, slot: Any, include_usage: bool
    ) -> AsyncIterator[bytes]:
        chunk_id = completion_id()
        created = int(time.time())

        def chunk(delta: Delta, finish: FinishReasonName | None = None) -> bytes:
            payload = ChatCompletionChunk(
                id=chunk_id,
                created=created,
                model=self.model_id,
                choices=[ChunkChoice(delta=delta, finish_reason=finish)],
                system_fingerprint=SYSTEM_FINGERPRINT,
            )
            exclude = None if include_usage else {"usage"}
            return sse_event(payload.model_dump_json(exclude=exclude))

        marker = "picolm-server-content-" + chunk_id
        sample = chunk(Delta(content=marker))[len(b"data: ") : -2].decode("utf-8")
        content_chunk = ContentChunkTemplate(sample, marker).render

        try:
            if generation.plan is None:
                yield chunk(Delta(role="assistant", content=""))
            else:
                # No content yet: a reply of tool calls only has content null.
                yield chunk(Delta(role="assistant"))
            try:
                if generation.plan is None:
                    async for piece in generation.text():
                        yield content_chunk(piece)
                else:
                    index = 0
                    async for event in generation.replies():
                        if isinstance(event, ContentPiece):
                            yield content_chunk(event.text)
                            continue
                        for delta in call_deltas(event, index):
                            yield chunk(delta)
                        index += 1
            except APIError as exc:
                # The 200 and earlier chunks are already sent: report in-band, then end.
                yield sse_event(json.dumps(exc.to_dict()))
                if ends_stream_with_done(exc):
                    yield DONE_EVENT
                return
            outcome = generation.outcome
            yield chunk(Delta(), outcome.finish_reason)
            if include_usage:
                usage_chunk = ChatCompletionChunk(
                    id=chunk_id,
                    created=created,
                    model=self.model_id,
                    choices=[],
                    system_fingerprint=SYSTEM_FINGERPRINT,
                    usage=outcome.usage(),
                )
                yield sse_event(usage_chunk.model_dump_json())
            yield DONE_EVENT
        finally:
            try:
                await generation.close()
            finally:
                with anyio.CancelScope(shield=True):
                    await slot.__aexit__(None, None, None)
