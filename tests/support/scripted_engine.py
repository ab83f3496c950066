"""An in-process engine that replays a script: for tests of the generation core and
adapters without a subprocess or a model. It follows the engine contract (one
PromptAccepted, text deltas, one Finished; closing stops it) and records what it got."""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import json
import math
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from picolm_server.engines.base import (
    EmbeddingInput,
    Embeddings,
    EngineAbilities,
    EngineHealth,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    PromptAccepted,
    TextDelta,
    TokenLimitExceeded,
)
from picolm_server.errors import (
    ContextLengthExceededError,
    EmbeddingsUnsupportedError,
    EngineError,
    InvalidRequestError,
)
from tests.support.fake_picolm import (
    FAILURES,
    TOKENS_BEFORE_FAILURE,
    Script,
    continued_reply,
    default_pieces,
    read_script,
)

GRAMMAR_ABILITIES = EngineAbilities(
    output_control="grammar", prompt_accepts_nul=True, top_k=True, tokenize=True
)
SCHEMA_ABILITIES = EngineAbilities(output_control="schema", prompt_accepts_nul=False)


@dataclass
class ScriptedEngine:
    """Replies with ``pieces`` (one text delta each) and ends with ``finish``.

    ``fail_after``: raise an EngineError after that many pieces. ``prompt_tokens``: what
    PromptAccepted reports (default: one per prompt character). Words are the tokens of
    ``tokenize``: each whitespace-separated word is its index in ``vocabulary``.
    """

    pieces: Sequence[str] = ("Hello", " world")
    finish: FinishReason = "stop"
    abilities: EngineAbilities = GRAMMAR_ABILITIES
    fail_after: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int = 0
    delay: float = 0.0
    vocabulary: tuple[str, ...] = ("<s>", "hello", "world")
    requests: list[GenerationRequest] = field(default_factory=list)
    closed: int = 0  # generations closed
    unloaded: int = 0  # close() calls: the shelf unloaded the model
    grammar_problem: str | None = None
    model: ModelInfo = field(
        default_factory=lambda: ModelInfo("scripted", Path("scripted.gguf"), 4096, 0)
    )

    async def admit(self, request: GenerationRequest) -> GenerationRequest:
        return replace(request, prompt_tokens=tuple(range(len(request.prompt))))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        self.requests.append(request)
        try:
            prompt_tokens = (
                self.prompt_tokens if self.prompt_tokens is not None else len(request.prompt)
            )
            yield PromptAccepted(prompt_tokens, self.cached_tokens)
            count = 0
            for piece in self.pieces:
                if self.fail_after is not None and count >= self.fail_after:
                    raise EngineError("The scripted engine failed.")
                if self.delay:
                    await asyncio.sleep(self.delay)
                count += 1
                yield TextDelta(piece, count)
            yield Finished(self.finish, count)
        finally:
            self.closed += 1

    def health(self) -> EngineHealth:
        return EngineHealth(True, "scripted")

    def close(self) -> None:
        self.unloaded += 1

    def grammar_error(self, gbnf: str) -> str | None:
        return self.grammar_problem

    def tokenize(
        self, text: str, *, add_special: bool, parse_special: bool, limit: int | None = None
    ) -> list[int]:
        ids = [0] if add_special else []
        for word in text.split():
            if word.lower() not in self.vocabulary:
                raise InvalidRequestError(f"no token for {word!r}")
            ids.append(self.vocabulary.index(word.lower()))
        if limit is not None and len(ids) > limit:
            raise TokenLimitExceeded(len(ids))
        return ids

    def detokenize(self, tokens: Sequence[int]) -> str:
        return " ".join(self.vocabulary[token] for token in tokens if token)

    def token_piece(self, token: int) -> bytes:
        return self.vocabulary[token].encode()

    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(request.prompt)

    async def embed(
        self, inputs: Sequence[EmbeddingInput], *, truncate: bool = False
    ) -> Embeddings:
        if not self.abilities.embeddings:
            raise EmbeddingsUnsupportedError("scripted")
        vectors = tuple((float(len(item)), 1.0) for item in inputs)
        return Embeddings(vectors, sum(len(item) for item in inputs))


# PicoLM's seed when a request gives none (the reply is then still deterministic).
_DEFAULT_SEED = 42


def prompt_token_count(prompt: str) -> int:
    """What :class:`DirectedEngine` counts as a prompt's tokens: a beginning-of-sequence
    token, then one per word and one per punctuation mark."""
    return 1 + len(re.findall(r"\w+|[^\w\s]", prompt))


@dataclass
class DirectedEngine(ScriptedEngine):
    """Replies as the prompt directs, in the PicoLM stand-in's directive language
    (tests/support/fake_picolm.py): ``[[reply:TEXT]]`` (TEXT as word tokens, then the
    end of the reply), ``[[eos-now]]``, ``[[slow:SECONDS]]`` before each token, a
    failure after two tokens for ``[[crash]]``, ``[[exit:N]]`` and the like, and
    ``[[hang]]``; without a directive, words picked by a hash of the prompt (and of the
    seed when sampling) until ``max_tokens``. Like a real engine it stops at
    ``max_tokens`` ("length"), and refuses a prompt of ``model.context_length`` tokens
    or more (counted by :func:`prompt_token_count`) in ``admit``.
    """

    async def admit(self, request: GenerationRequest) -> GenerationRequest:
        tokens = prompt_token_count(request.prompt)
        if tokens >= self.model.context_length:
            raise ContextLengthExceededError.prompt(tokens, self.model.context_length)
        return replace(request, prompt_tokens=tuple(range(tokens)))

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return prompt_token_count(request.prompt)

    def _pieces(self, request: GenerationRequest, script: Script) -> tuple[list[bytes], bool]:
        """The reply's tokens, and whether the reply ends after them (EOS)."""
        if script.behaviour == "reply":
            return continued_reply(request.prompt, script.reply), True
        if script.behaviour == "eos-now":
            return [], True
        seed = (request.seed if request.seed is not None else _DEFAULT_SEED) % 2**64
        ids = [ord(char) for char in request.prompt]
        sampled = seed if request.temperature > 0 else None
        return default_pieces(ids, sampled, request.max_tokens), False

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        self.requests.append(request)
        script = read_script(request.prompt)
        try:
            yield PromptAccepted(prompt_token_count(request.prompt), self.cached_tokens)
            pieces, ends = self._pieces(request, script)
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            count = 0
            for piece in pieces[: request.max_tokens]:
                if script.behaviour in FAILURES and count >= TOKENS_BEFORE_FAILURE:
                    if script.behaviour == "hang":
                        await asyncio.Event().wait()
                    raise EngineError("The scripted engine failed.")
                if script.slow:
                    await asyncio.sleep(script.slow)
                count += 1
                text = decoder.decode(piece)
                if text:
                    yield TextDelta(text, count)
            finish: FinishReason = "stop" if ends and len(pieces) <= count else "length"
            yield Finished(finish, count)
        finally:
            self.closed += 1


@dataclass
class HeldEngine(DirectedEngine):
    """A :class:`DirectedEngine` whose generations stop once their prompt is accepted,
    until the test sets ``release``: ``started`` is set when one is held there. For tests
    that look at the server while a generation is running, with no clock involved."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        events = super().generate(request)
        try:
            yield await anext(events)  # PromptAccepted
            self.started.set()
            await self.release.wait()
            async for event in events:
                yield event
        finally:
            await events.aclose()


def engine_of_kind(
    abilities: EngineAbilities, model_id: str, context_length: int = 4096
) -> DirectedEngine:
    """A :class:`DirectedEngine` that holds replies as ``abilities`` say (a grammar, or
    JSON without one: the core then plans calls and prompts as for llama.cpp or PicoLM),
    serving ``model_id`` with a context that fits prompts with tools."""
    engine = DirectedEngine(abilities=abilities)
    engine.model = replace(engine.model, id=model_id, context_length=context_length)
    return engine


# The width of EmbeddingEngine's vectors.
EMBEDDING_WIDTH = 16
EMBEDDING_ABILITIES = replace(GRAMMAR_ABILITIES, embeddings=True)


def _float32(value: float) -> float:
    """``value`` rounded to float32, as engines hand vectors out (and base64 carries)."""
    import struct

    rounded: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return rounded


@dataclass
class EmbeddingEngine(DirectedEngine):
    """A :class:`DirectedEngine` that also embeds, as its abilities declare: each input's
    vector is :data:`EMBEDDING_WIDTH` float32 values of unit length, picked by a hash of
    the input (its text, or its token ids), so an input has the same vector alone or in a
    batch and different inputs have different ones. A text counts
    :func:`prompt_token_count` tokens, token ids one each."""

    abilities: EngineAbilities = EMBEDDING_ABILITIES
    embedded: list[list[EmbeddingInput]] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)  # each embed call's truncate

    async def embed(
        self, inputs: Sequence[EmbeddingInput], *, truncate: bool = False
    ) -> Embeddings:
        self.embedded.append(list(inputs))
        self.truncated.append(truncate)
        vectors = []
        tokens = 0
        for item in inputs:
            if isinstance(item, str):
                key = item.encode()
                tokens += prompt_token_count(item)
            else:
                key = json.dumps(list(item)).encode()
                tokens += len(item)
            digest = hashlib.sha256(key).digest()[:EMBEDDING_WIDTH]
            raw = [(byte - 127.5) / 127.5 for byte in digest]
            norm = math.sqrt(math.fsum(value * value for value in raw))
            vectors.append(tuple(_float32(value / norm) for value in raw))
        return Embeddings(tuple(vectors), tokens)
