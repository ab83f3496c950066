"""The generation core: what every wire API calls. It owns the engine, the chat
template, the server's defaults, the scheduler and the shutdown drain, and is the one
place that reads the engine's abilities.

``open`` starts a generation and returns its :class:`EventStream` (errors before the
first token are raised here, while an adapter can still answer with a status);
``complete`` runs one to the end and returns a :class:`Reply`. ``tokenize``,
``detokenize`` and ``embed`` give adapters the engine's tokenizer and embeddings,
refused clearly where the engine cannot.

Tokenizer work outside a generation (``tokenize``, ``detokenize``, token counts, and
what an adapter runs with :meth:`GenerationCore.tokenizer_job`) costs CPU and memory in
proportion to the client's text, so it is admitted like a generation: one job at a time
(``tokenizer_work``), a bounded queue, 429 past it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from ..config.settings import GenerationDefaults, PromptSchemaSetting
from ..engines.base import EmbeddingInput, Embeddings, Engine, EngineAbilities, TokenLimitExceeded
from ..errors import (
    APIError,
    ContextLengthExceededError,
    EmbeddingsUnsupportedError,
    EngineCannotError,
    InvalidRequestError,
    ModelNotFoundError,
)
from ..observability.observation import NO_OBSERVER, GenerationObserver
from ..prompting.chat_template import ChatTemplate
from .drain import Drain
from .events import Finish, FinishReason, TextDelta, ToolCallDone, Usage
from .scheduler import Scheduler

if TYPE_CHECKING:
    # The request path (request checks, tool calls, the rules applied to the output)
    # is imported with the first generation: the server is ready before it loads.
    from .run import Generation
    from .spec import GenerationSpec
    from .stream import EventStream

T = TypeVar("T")

# The most tokens one request may have tokenized outside a generation (``/tokenize``):
# OpenAI's bound on the tokens of one embeddings request, the other API whose answer
# grows with every token.
MAX_TOKENIZE_TOKENS = 300_000
# Tokenizer jobs that may wait for the one running; more are refused (429).
TOKENIZER_QUEUE = 16


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # compact JSON text of an object matching the tool's schema


@dataclass(frozen=True)
class Reply:
    """A whole generation: its text (for a JSON reply, the JSON), calls, and end."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None


@dataclass
class GenerationCore:
    engine: Engine
    template: ChatTemplate
    defaults: GenerationDefaults
    scheduler: Scheduler
    drain: Drain = field(default_factory=Drain)
    tokenizer_work: Scheduler = field(
        default_factory=lambda: Scheduler(1, TOKENIZER_QUEUE, what="tokenizer job")
    )
    # Where a schema written in the prompt is taken as the reply's (structured_output).
    prompt_schema: PromptSchemaSetting = "json_object"
    # What frees the engine when the server has stopped (None: nothing to free).
    close_engine: Callable[[], None] | None = None

    def close(self) -> None:
        """After the server has stopped serving: free the engine, which keeps what it
        should (llama.cpp writes its prompt states to disk). Blocks."""
        if self.close_engine is not None:
            self.close_engine()

    @property
    def model_id(self) -> str:
        return self.engine.model.id

    @property
    def abilities(self) -> EngineAbilities:
        return self.engine.abilities

    def accept(self, model: str, observer: GenerationObserver = NO_OBSERVER) -> None:
        """What every wire API does first with a parsed request: record the model it
        asked for (the request log shows it, even when refused), then check it."""
        observer.request_parsed(model)
        self.check_model(model)

    def check_model(self, model: str, param: str = "model") -> None:
        """404 ``model_not_found`` unless ``model`` is the served model's id."""
        if model != self.model_id:
            error = ModelNotFoundError(model)
            error.param = param
            raise error

    def prepare(
        self, spec: GenerationSpec, observer: GenerationObserver = NO_OBSERVER
    ) -> Generation:
        """Validate and convert; raises 4xx errors before any engine work."""
        from .prepare import prepare
        from .run import Generation

        prepared = prepare(spec, self.engine, self.template, self.defaults, self.prompt_schema)
        if prepared.plan is not None and prepared.plan.schema_from_prompt:
            observer.schema_from_prompt()
        return Generation(
            engine=self.engine,
            request=prepared.request,
            stops=prepared.stops,
            timeout_seconds=self.defaults.timeout_seconds,
            plan=prepared.plan,
            client_stops=prepared.client_stops,
            strip_leading_space=prepared.strip_leading_space,
            drop_result_echo=prepared.drop_result_echo,
            drain=self.drain,
            observer=observer,
        )

    async def open(
        self, spec: GenerationSpec, observer: GenerationObserver = NO_OBSERVER
    ) -> EventStream:
        """Start a generation: every error before its first token (a 4xx, a full queue,
        a prompt that does not fit, an engine that cannot start) is raised here. The
        returned stream owns the slot and the engine until it is closed."""
        generation = self.prepare(spec, observer)
        try:
            await generation.admit()
        except ContextLengthExceededError as exc:
            raise exc.for_field(spec.prompt.param) from None
        # What the stream releases when it is closed: first the slot, whose wait (not
        # its holding) ends when a shutdown drain does.
        resources = contextlib.AsyncExitStack()
        with self.drain.guard():
            await resources.enter_async_context(self.scheduler.slot())
        from .stream import EventStream

        stream = EventStream(generation, resources)
        try:
            await generation.start()
        except BaseException as exc:
            await stream.aclose()
            if isinstance(exc, ContextLengthExceededError):
                raise exc.for_field(spec.prompt.param) from None
            raise
        return stream

    async def complete(
        self, spec: GenerationSpec, observer: GenerationObserver = NO_OBSERVER
    ) -> Reply:
        """Run a generation to its end."""
        stream = await self.open(spec, observer)
        pieces: list[str] = []
        calls: list[ToolCall] = []
        async with stream:
            async for event in stream:
                if isinstance(event, TextDelta):
                    pieces.append(event.text)
                elif isinstance(event, ToolCallDone):
                    calls.append(ToolCall(event.id, event.name, event.arguments))
                elif isinstance(event, Finish):
                    return Reply(
                        "".join(pieces),
                        tuple(calls),
                        event.reason,
                        event.usage,
                        event.stop_sequence,
                    )
        raise APIError("The generation ended without finishing.")  # pragma: no cover

    # ---- the engine's tokenizer and embeddings ----

    def _require_tokenizer(self) -> None:
        if not self.abilities.tokenize:
            raise EngineCannotError(
                "This model's engine cannot tokenize: its vocabulary could not be read."
            )

    async def tokenizer_job(self, work: Callable[[], T]) -> T:
        """Run ``work`` (tokenizer work on a client's text) in a worker thread, admitted
        through ``tokenizer_work``. A cancelled caller waits for the thread to finish:
        the slot is never free while its work still runs."""
        async with self.tokenizer_work.slot():
            future = asyncio.get_running_loop().run_in_executor(None, work)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                while not future.done():  # a thread cannot be stopped: wait for it
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({future})
                if not future.cancelled():
                    future.exception()  # retrieved: nobody is left to be told of it
                raise

    async def tokenize(
        self,
        text: str,
        *,
        add_special: bool = True,
        parse_special: bool = True,
        param: str = "content",
    ) -> list[int]:
        """The model's exact token ids for ``text``; more than
        :data:`MAX_TOKENIZE_TOKENS` of them is a 400 naming ``param``."""
        self._require_tokenizer()

        def work() -> list[int]:
            return self.engine.tokenize(
                text,
                add_special=add_special,
                parse_special=parse_special,
                limit=MAX_TOKENIZE_TOKENS,
            )

        try:
            return await self.tokenizer_job(work)
        except TokenLimitExceeded as exc:
            raise InvalidRequestError(
                f"'{param}' is {exc.describe()} tokens long; at most {MAX_TOKENIZE_TOKENS} "
                "tokens can be tokenized in one request.",
                param=param,
                code="invalid_value",
            ) from None

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``; an id outside the vocabulary is a 400 (``tokens``)."""
        self._require_tokenizer()
        return await self.tokenizer_job(lambda: self.engine.detokenize(list(tokens)))

    async def count_prompt_tokens(self, spec: GenerationSpec) -> int:
        """The prompt tokens a generation of ``spec`` would report (template and tools
        rendered as it would be), without a slot and without refusing a prompt longer
        than the context: counting is how a client finds out."""
        from .prepare import prepare

        self._require_tokenizer()
        prepared = prepare(spec, self.engine, self.template, self.defaults, self.prompt_schema)
        return await self.tokenizer_job(lambda: self.engine.count_prompt_tokens(prepared.request))

    async def embed(self, inputs: Sequence[EmbeddingInput]) -> Embeddings:
        """One embedding per input; engines that cannot embed get a 400
        (:class:`~picolm_server.errors.EmbeddingsUnsupportedError`)."""
        if not self.abilities.embeddings:
            raise EmbeddingsUnsupportedError(self.engine.model.owned_by)
        return await self.engine.embed(inputs)
