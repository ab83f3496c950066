"""The generation core: what every wire API calls. It owns the models it serves from
(:mod:`.models`: the shelf), the shutdown drain and the tokenizer's admission, and is
the one place that reads an engine's abilities.

A wire API first has the core :meth:`~GenerationCore.accept` the model its request
names: that gives a :class:`ModelCore`, the core bound to that model. Its ``open``
starts a generation and returns its :class:`EventStream` (errors before the first token
are raised here, while an adapter can still answer with a status: a model that fails to
load too); ``complete`` runs one to the end and returns a :class:`Reply`. ``tokenize``,
``detokenize`` and ``embed`` give adapters the model's tokenizer and embeddings, refused
clearly where its engine cannot. Each holds a lease on the model while it works, so
that the shelf never unloads a model in use.

Tokenizer work outside a generation (``tokenize``, ``detokenize``, token counts, and
what an adapter runs with :meth:`GenerationCore.tokenizer_job`) costs CPU and memory in
proportion to the client's text, so it is admitted like a generation: one job at a time
(``tokenizer_work``), a bounded queue, 429 past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from ..config.settings import GenerationDefaults, PromptSchemaSetting
from ..engines.base import EmbeddingInput, Embeddings, Engine, TokenLimitExceeded
from ..errors import (
    APIError,
    ContextLengthExceededError,
    EmbeddingsUnsupportedError,
    EngineCannotError,
    InvalidRequestError,
    ModelNotFoundError,
)
from ..observability.observation import NO_OBSERVER, GenerationObserver
from .drain import Drain
from .events import Finish, FinishReason, TextDelta, ToolCallDone, Usage
from .models import LoadedModel, ModelSource, RequestedModel
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
    models: ModelSource
    drain: Drain = field(default_factory=Drain)
    tokenizer_work: Scheduler = field(
        default_factory=lambda: Scheduler(1, TOKENIZER_QUEUE, what="tokenizer job")
    )
    # Where a schema written in the prompt is taken as the reply's (structured_output).
    prompt_schema: PromptSchemaSetting = "json_object"

    def accept(
        self, model: str, observer: GenerationObserver = NO_OBSERVER, param: str = "model"
    ) -> ModelCore:
        """What every wire API does first with a parsed request: record the model it
        asked for (the request log shows it, even when refused), then find it (404
        ``model_not_found`` naming ``param`` for a name the server does not serve; a
        name is only ever looked up, never made into a path)."""
        observer.request_parsed(model)
        return self.model(model, param)

    def model(self, name: str, param: str = "model") -> ModelCore:
        """The core bound to the model ``name`` names (no name: the default model)."""
        try:
            requested = self.models.find(name)
        except ModelNotFoundError as exc:
            exc.param = param
            raise
        return ModelCore(self, requested)

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


@dataclass(frozen=True)
class ModelCore:
    """The core bound to one model of its source: what a request's work runs on."""

    core: GenerationCore
    model: RequestedModel
    # How long the model stays loaded after this request's leases end (seconds;
    # negative: forever); None: its setting. See :meth:`keeping`.
    keep_alive: float | None = None

    def keeping(self, keep_alive: float | None) -> ModelCore:
        """This core, its leases leaving the model loaded ``keep_alive`` seconds."""
        return dataclasses.replace(self, keep_alive=keep_alive)

    async def unload(self) -> None:
        """Unload the model now, or once the requests using it are done."""
        await self.core.models.unload(self.model.id)

    @property
    def model_id(self) -> str:
        return self.model.id

    @property
    def defaults(self) -> GenerationDefaults:
        return self.model.defaults

    @contextlib.asynccontextmanager
    async def loaded(self) -> AsyncIterator[LoadedModel]:
        """The model, loaded and leased for the ``async with`` block."""
        async with self.core.models.lease(self.model.id, self.keep_alive) as loaded:
            yield loaded

    async def inspect(self, look: Callable[[Engine], T]) -> T:
        """``look`` at the model's engine (a quick read, on the event loop)."""
        async with self.loaded() as loaded:
            return look(loaded.engine)

    def _prepare(
        self, loaded: LoadedModel, spec: GenerationSpec, observer: GenerationObserver
    ) -> Generation:
        """Validate and convert; raises 4xx errors before any engine work."""
        from .prepare import prepare
        from .run import Generation

        core = self.core
        prepared = prepare(
            spec, loaded.engine, loaded.template, loaded.defaults, core.prompt_schema
        )
        if prepared.plan is not None and prepared.plan.schema_from_prompt:
            observer.schema_from_prompt()
        return Generation(
            engine=loaded.engine,
            request=prepared.request,
            stops=prepared.stops,
            timeout_seconds=loaded.defaults.timeout_seconds,
            plan=prepared.plan,
            client_stops=prepared.client_stops,
            strip_leading_space=prepared.strip_leading_space,
            drop_result_echo=prepared.drop_result_echo,
            drain=core.drain,
            observer=observer,
        )

    async def open(
        self, spec: GenerationSpec, observer: GenerationObserver = NO_OBSERVER
    ) -> EventStream:
        """Start a generation: every error before its first token (a model that cannot
        load, a 4xx, a full queue, a prompt that does not fit, an engine that cannot
        start) is raised here. The returned stream owns the lease on the model, its slot
        and the engine until it is closed."""
        from .stream import EventStream

        # What the stream releases when it is closed, last in first out: the slot, then
        # the lease (a model is unloadable only once its last generation is done).
        resources = contextlib.AsyncExitStack()
        try:
            loaded = await resources.enter_async_context(self.loaded())
            generation = self._prepare(loaded, spec, observer)
            try:
                await generation.admit()
            except ContextLengthExceededError as exc:
                raise exc.for_field(spec.prompt.param) from None
            # The slot's wait (not its holding) ends when a shutdown drain does.
            with self.core.drain.guard():
                await resources.enter_async_context(loaded.scheduler.slot())
        except BaseException:
            await resources.aclose()
            raise
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

    # ---- the model's tokenizer and embeddings ----

    @staticmethod
    def _require_tokenizer(engine: Engine) -> None:
        if not engine.abilities.tokenize:
            raise EngineCannotError(
                "This model's engine cannot tokenize: its vocabulary could not be read."
            )

    async def tokenizer_job(self, work: Callable[[Engine], T]) -> T:
        """Run ``work`` on the model's engine in the core's tokenizer worker (see
        :meth:`GenerationCore.tokenizer_job`), the model leased meanwhile."""
        async with self.loaded() as loaded:
            engine = loaded.engine
            return await self.core.tokenizer_job(lambda: work(engine))

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

        def work(engine: Engine) -> list[int]:
            self._require_tokenizer(engine)
            return engine.tokenize(
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

        def work(engine: Engine) -> str:
            self._require_tokenizer(engine)
            return engine.detokenize(list(tokens))

        return await self.tokenizer_job(work)

    async def count_prompt_tokens(self, spec: GenerationSpec) -> int:
        """The prompt tokens a generation of ``spec`` would report (template and tools
        rendered as it would be), without a slot and without refusing a prompt longer
        than the context: counting is how a client finds out."""
        from .prepare import prepare

        async with self.loaded() as loaded:
            engine = loaded.engine
            self._require_tokenizer(engine)
            prepared = prepare(
                spec, engine, loaded.template, loaded.defaults, self.core.prompt_schema
            )
            return await self.core.tokenizer_job(
                lambda: engine.count_prompt_tokens(prepared.request)
            )

    async def embed(
        self, inputs: Sequence[EmbeddingInput], *, truncate: bool = False
    ) -> Embeddings:
        """One embedding per input; engines that cannot embed get a 400
        (:class:`~picolm_server.errors.EmbeddingsUnsupportedError`). ``truncate``: an
        input longer than the embedding context is cut rather than refused."""
        async with self.loaded() as loaded:
            engine = loaded.engine
            if not engine.abilities.embeddings:
                raise EmbeddingsUnsupportedError(engine.model.owned_by)
            return await engine.embed(inputs, truncate=truncate)
