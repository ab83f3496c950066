"""One test, both engines: the embedded SmolLM2 on llama.cpp and PicoLM through its
stand-in, each a session server from tests/conftest.py, with what a request needs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.conftest import TEST_API_KEY
from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL
from tests.support.picolm_setup import PicoLMServer
from tests.support.server import RunningServer

LLAMA_MODEL = "SmolLM2-135M-Instruct"
ENGINES = ("llama", "picolm")


@dataclass
class Target:
    """A running server with what a request to it needs."""

    name: str
    server: RunningServer
    model: str
    headers: dict[str, str]
    picolm: PicoLMServer | None = None

    def runs_with(self, marker: str) -> int:
        """PicoLM runs whose prompt holds ``marker`` (0 on llama.cpp: nothing to count)."""
        return len(self.picolm.runs_with(marker)) if self.picolm is not None else 0


def target_for(request: pytest.FixtureRequest) -> Target:
    """For a fixture parametrized over :data:`ENGINES`."""
    if request.param == "llama":
        server: RunningServer = request.getfixturevalue("llama_server")
        return Target("llama", server, LLAMA_MODEL, {})
    picolm: PicoLMServer = request.getfixturevalue("picolm_server")
    headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
    return Target("picolm", picolm.server, PICOLM_MODEL, headers, picolm)
