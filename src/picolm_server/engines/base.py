"""The engine interface: what the server asks of an inference backend, and what it gets back.

An engine turns one rendered prompt into a stream of events. It knows nothing of HTTP,
OpenAI's types, stop strings or time limits: the serving layer applies those to the
events and closes the stream (``aclose()``) when it is done with it, at which point the
engine must stop generating and release what it holds (a subprocess, a model lock)
before ``aclose()`` returns.

Before a request waits for a generation slot, :meth:`Engine.admit` checks that its
prompt fits (tokenizing it off the event loop, at a bounded cost): a request that cannot
run never holds a slot.

What an engine can do beyond generating is declared once, in its
:class:`EngineAbilities`; the generation core reads them in one place and never probes
an engine for a method.

Event order: exactly one :class:`PromptAccepted`, then any number of :class:`TextDelta`,
then one :class:`Finished`. An engine raises :class:`~picolm_server.errors.APIError`
subclasses for failures: ``ContextLengthExceededError`` before ``PromptAccepted``,
``EngineError`` for a crash at any point.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from ..prompting.tokens import SplitPrompt

FinishReason = Literal["stop", "length"]

# How an engine holds a reply to an OutputConstraint (the core reads it in one place):
# "grammar": it follows ``gbnf`` (and so the schema the grammar was built from);
# "schema": it writes JSON matching ``json_schema`` exactly, without a grammar;
# "json": it only keeps the reply well-formed JSON, and the server validates the rest.
OutputControl = Literal["grammar", "schema", "json"]


@dataclass(frozen=True)
class OutputConstraint:
    """Restrict the output to JSON.

    ``json_schema`` is the schema of the whole reply (a tool call's envelope included);
    None means any JSON object. ``gbnf`` is an optional ready-made grammar for engines
    that take one (llama.cpp). What an engine does with them is its ``output_control``.
    """

    json_schema: dict[str, Any] | None = None
    gbnf: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None = None
    # 0: no top-k cut (only engines whose abilities say ``top_k`` are given another).
    top_k: int = 0
    constraint: OutputConstraint | None = None
    # The text every conversation of an application starts with (its system prompt and
    # tools, rendered without a generation prompt), when it is a text prefix of
    # ``prompt``: engines that save prompt state may keep this part's state on its own.
    # It never changes what is generated.
    shared_prefix: str | None = None
    # ``prompt`` as the template's own text and the request's text: engines that turn
    # marker text into control tokens do so only in the template's text. None: all of
    # ``prompt`` is the caller's own text.
    split_prompt: SplitPrompt | None = None
    # The prompt's token ids as this engine feeds them, once ``Engine.admit`` has
    # computed them (a request without them is tokenized by ``generate``).
    prompt_tokens: tuple[int, ...] | None = None


@dataclass(frozen=True)
class PromptAccepted:
    """The prompt fits and generation is starting."""

    prompt_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class TextDelta:
    """New reply text; ``completion_tokens`` is the running count of generated tokens."""

    text: str
    completion_tokens: int


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    completion_tokens: int
    # Of those, the tokens a grammar fixed and the engine wrote without sampling
    # (llama.cpp's jump-forward); counted in completion_tokens too.
    written_tokens: int = 0


GenerationEvent = PromptAccepted | TextDelta | Finished


@dataclass(frozen=True)
class ModelInfo:
    """What the server says about the model it serves."""

    id: str
    path: Path
    context_length: int
    created: int
    owned_by: str = "picolm-server"

    @classmethod
    def of_file(cls, model_id: str, path: Path, context_length: int, owned_by: str) -> ModelInfo:
        """A model served from a file; ``created`` is the file's modification time."""
        return cls(model_id, path, context_length, int(path.stat().st_mtime), owned_by)


@dataclass(frozen=True)
class EngineAbilities:
    """What an engine can do beyond generating text, read by the core in one place.

    ``output_control``: how it holds a reply to an :class:`OutputConstraint` (see
    :data:`OutputControl`). ``prompt_accepts_nul``: whether a NUL character in the prompt
    reaches the model (PicoLM reads its prompt as a C string, which ends at the first
    NUL: the server refuses such a prompt rather than let the model see part of it).
    ``top_k``: it honours :attr:`GenerationRequest.top_k`. ``tokenize``: ``tokenize`` and
    ``detokenize`` use the model's exact tokenizer. ``embeddings``: ``embed`` works.
    ``prompt_reuse``: it keeps computed prompt state between requests.
    ``fim_tokens``: the model's fill-in-the-middle control tokens (prefix, suffix,
    middle), None when it has none or the engine cannot feed control tokens.
    ``parallel``: how many generations it runs together (the scheduler's slots unless
    ``server.max_concurrent`` says otherwise).
    """

    output_control: OutputControl
    prompt_accepts_nul: bool
    top_k: bool = False
    tokenize: bool = False
    embeddings: bool = False
    prompt_reuse: bool = False
    fim_tokens: tuple[int, int, int] | None = None
    parallel: int = 1

    @property
    def grammar(self) -> bool:
        """It enforces a GBNF grammar (see :meth:`Engine.grammar_error`)."""
        return self.output_control == "grammar"

    @property
    def schema_exact(self) -> bool:
        """It writes JSON matching a schema exactly, without a grammar."""
        return self.output_control == "schema"


@dataclass(frozen=True)
class Embeddings:
    """One vector per input, in order, and the tokens the inputs held in all."""

    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int


# An embedding input: text, or token ids as the model's tokenizer gives them.
EmbeddingInput = str | Sequence[int]


@dataclass(frozen=True)
class EngineHealth:
    ok: bool
    detail: str


class TokenLimitExceeded(Exception):
    """A text holds more tokens than the ``limit`` it was tokenized with: ``count`` of
    them, or at least that many when ``at_least`` (an engine may stop counting early)."""

    def __init__(self, count: int, *, at_least: bool = False) -> None:
        super().__init__(count)
        self.count = count
        self.at_least = at_least

    def describe(self) -> str:
        return f"at least {self.count}" if self.at_least else str(self.count)


@runtime_checkable
class Engine(Protocol):
    """An inference backend. ``generate`` is the whole of the work."""

    model: ModelInfo
    abilities: EngineAbilities

    async def admit(self, request: GenerationRequest) -> GenerationRequest:
        """Refuse a prompt that does not fit (``ContextLengthExceededError``) without
        holding anything shared; the request comes back with its ``prompt_tokens``."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Run one generation; closing the iterator early must stop it."""
        ...

    def health(self) -> EngineHealth:
        """Whether a generation could start now (cheap: no generation is run)."""
        ...

    def grammar_error(self, gbnf: str) -> str | None:
        """Why this engine would refuse the grammar, or None when it takes it (only
        asked of engines whose abilities say ``grammar``)."""
        ...

    def tokenize(
        self, text: str, *, add_special: bool, parse_special: bool, limit: int | None = None
    ) -> list[int]:
        """The model's token ids for ``text``: ``add_special`` adds what the model puts
        before a prompt (BOS), ``parse_special`` reads marker text (``<|im_start|>``) as
        control tokens. More than ``limit`` of them raises :class:`TokenLimitExceeded`
        (an engine that can stops before it holds them all). Only exact when abilities
        say ``tokenize``. May block: call it off the event loop for long texts."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of token ids as the engine prints them, control tokens included
        (invalid UTF-8 replaced); ``InvalidRequestError`` for an id outside the
        vocabulary."""
        ...

    def token_piece(self, token: int) -> bytes:
        """One token's text as the engine prints it (a byte token is one raw byte)."""
        ...

    def vocabulary_size(self) -> int:
        """How many token ids the model has (0 when its vocabulary is unknown)."""
        ...

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """The prompt's token count as a generation of ``request`` reports it, even when
        it does not fit the context (nothing is refused). May block."""
        ...

    async def embed(
        self, inputs: Sequence[EmbeddingInput], *, truncate: bool = False
    ) -> Embeddings:
        """One embedding per input. Engines whose abilities do not say ``embeddings``
        raise ``EmbeddingsUnsupportedError``. An input longer than the embedding
        context is refused, or with ``truncate`` cut to its first tokens that fit."""
        ...

    def close(self) -> None:
        """Free what the model holds (the shelf unloads it); called once, after its last
        generation, off the event loop. It may block."""
        ...
