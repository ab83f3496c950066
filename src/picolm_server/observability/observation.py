"""What one generation reports to whoever watches it (the request log and the metrics).

The serving layer calls these hooks at the moments only it knows: the prompt's size,
the first token, the last token count, an engine failure. It knows nothing of logs or
Prometheus; :class:`RequestRecord`, one per HTTP request, implements the hooks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..errors import APIError, EngineTimeoutError

EngineFailure = Literal["error", "timeout"]


class GenerationObserver(Protocol):
    def request_parsed(self, model: str) -> None:
        """The model the request asked for (before it is checked)."""

    def schema_from_prompt(self) -> None:
        """The reply is held to a JSON Schema found in the prompt (not sent as one)."""

    def prompt_accepted(self, prompt_tokens: int, cached_tokens: int) -> None:
        """The engine took the prompt: its size and how much came from saved state."""

    def first_token(self) -> None:
        """The engine produced the reply's first token."""

    def generation_ended(self, completion_tokens: int, written_tokens: int = 0) -> None:
        """The generation is over (finished, failed or cancelled) with this many tokens,
        ``written_tokens`` of them fixed by a grammar and written without sampling."""

    def engine_failed(self, error: APIError) -> None:
        """The engine (or the time limit) failed the generation with ``error``."""


class NoObserver:
    """Nobody is watching: every hook does nothing."""

    def request_parsed(self, model: str) -> None:
        pass

    def schema_from_prompt(self) -> None:
        pass

    def prompt_accepted(self, prompt_tokens: int, cached_tokens: int) -> None:
        pass

    def first_token(self) -> None:
        pass

    def generation_ended(self, completion_tokens: int, written_tokens: int = 0) -> None:
        pass

    def engine_failed(self, error: APIError) -> None:
        pass


NO_OBSERVER: GenerationObserver = NoObserver()


@dataclass
class RequestRecord:
    """Everything known about one HTTP request, filled in as it is served: the request
    log writes it as one line and the metrics count it once it is over."""

    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    route: str = ""
    status: int = 0
    model: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    # Of the completion tokens, those a grammar fixed (llama.cpp's jump-forward).
    written_tokens: int = 0
    ttft_seconds: float | None = None
    duration_seconds: float | None = None
    disconnected: bool = False
    engine_error: EngineFailure | None = None
    # Where the reply's JSON Schema came from, when not from the request's parameters.
    schema_source: Literal["prompt"] | None = None

    # ---- GenerationObserver ----

    def request_parsed(self, model: str) -> None:
        self.model = model

    def schema_from_prompt(self) -> None:
        self.schema_source = "prompt"

    def prompt_accepted(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = cached_tokens
        self.completion_tokens = 0

    def first_token(self) -> None:
        if self.ttft_seconds is None:
            self.ttft_seconds = time.perf_counter() - self.started

    def generation_ended(self, completion_tokens: int, written_tokens: int = 0) -> None:
        if self.prompt_tokens is not None:
            self.completion_tokens = completion_tokens
            self.written_tokens = written_tokens

    def engine_failed(self, error: APIError) -> None:
        if isinstance(error, EngineTimeoutError):
            self.engine_error = "timeout"
        elif error.status_code >= 500:
            self.engine_error = "error"

    # ---- the end ----

    def finish(self) -> None:
        self.duration_seconds = time.perf_counter() - self.started
