"""The servers the Responses tests talk to, one per engine, each with its own store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import openai

from tests.support.picolm_setup import PicoLMServer
from tests.support.server import RunningServer

LLAMA_MODEL = "SmolLM2-135M-Instruct"
# The machine may be slow and busy: no request is timed out by the test client.
TIMEOUT = 900.0


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

    def post(self, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.server.openai_base_url}/responses", json=body, timeout=TIMEOUT)
