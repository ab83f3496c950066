"""The servers the Responses tests talk to, each with its own store: real ones, one per
engine, and the app in-process over a scripted engine configured as the PicoLM one."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path

import openai

from tests.support.inprocess import InProcessServer, serve_in_process
from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL
from tests.support.picolm_setup import PicoLMServer
from tests.support.scripted_engine import SCHEMA_ABILITIES, DirectedEngine
from tests.support.server import RunningServer

LLAMA_MODEL = "SmolLM2-135M-Instruct"
# The machine may be slow and busy: no request is timed out by the test client.
TIMEOUT = 900.0
# What the PicoLM server is given: room for two tools' schemas in a prompt.
CONTEXT_LENGTH = 4096
MAX_TOKENS = 64


@dataclass
class Target:
    name: str
    server: RunningServer
    model: str
    picolm: PicoLMServer | None = None

    def scripted(self, reply: str) -> str:
        """What makes the PicoLM stand-in write ``reply`` (nothing for a real model)."""
        return f" [[reply:{reply}]]" if self.picolm is not None else ""

    def client(self) -> openai.OpenAI:
        return self.server.client(max_retries=0, timeout=TIMEOUT)  # type: ignore[no-any-return]


def serve_responses(store: Path) -> AbstractAsyncContextManager[InProcessServer]:
    """The app as the PicoLM target is configured (no key, its context and token
    budget), over a :class:`DirectedEngine` that holds output as PicoLM does (to a
    schema, so a named tool call is its arguments alone), keeping responses in
    ``store``."""
    engine = DirectedEngine(abilities=SCHEMA_ABILITIES)
    engine.model = replace(engine.model, id=PICOLM_MODEL, context_length=CONTEXT_LENGTH)
    return serve_in_process(
        engine,
        server={"api_key": ""},
        picolm={"model_id": PICOLM_MODEL, "max_tokens": MAX_TOKENS},
        responses={"store_path": str(store)},
    )
