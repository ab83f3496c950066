"""GET /metrics on a real server driving the PicoLM stand-in, where the engine is the
point: a PicoLM process that crashes, and one that hangs until the time limit ends it,
each counted by its reason. The exposition's shape and counters are in test_metrics.py,
in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TEST_API_KEY
from tests.http.test_requests import sse_payloads, user
from tests.observability.test_metrics import CHAT_ROUTE, Samples, parse, value
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer

AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}


@pytest.fixture(scope="module")
def metrics_server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    """With a key, one generation at a time, none waiting, and a short time limit."""
    workdir = tmp_path_factory.mktemp("metrics-server")
    with picolm_files.serve(
        workdir,
        server={"api_key": TEST_API_KEY, "max_queue": 0},
        picolm={"timeout_seconds": 1.5},
    ) as server:
        yield server


def scrape(server: PicoLMServer) -> Samples:
    response = httpx.get(f"{server.base_url}/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def chat(server: PicoLMServer, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}{CHAT_ROUTE}",
        json={"model": MODEL_ID, **body},
        headers=AUTH,
        timeout=30,
    )


def test_engine_errors_and_timeouts_are_counted(metrics_server: PicoLMServer) -> None:
    before = scrape(metrics_server)
    assert chat(metrics_server, {"messages": user("[[crash]]")}).status_code == 500
    assert chat(metrics_server, {"messages": user("[[hang]]")}).status_code == 504
    streamed = chat(metrics_server, {"messages": user("[[crash]]"), "stream": True})
    assert json.loads(sse_payloads(streamed.text)[-1])["error"]["code"] == "engine_error"
    after = scrape(metrics_server)
    failures = "picolm_engine_failures_total"
    assert value(after, failures, reason="error") - value(before, failures, reason="error") == 2
    assert value(after, failures, reason="timeout") - value(before, failures, reason="timeout") == 1
