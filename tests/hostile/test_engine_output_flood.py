"""An engine that floods its output costs the server bounded work: stdout past what the
token budget can print stops the engine (500), a stderr flood runs into the time limit
(504), and all the while the event loop serves others (/health answers)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.http.test_errors import assert_error, marker
from tests.http.test_requests import sse_payloads
from tests.support.picolm_setup import (
    MODEL_ID,
    PicoLMFiles,
    PicoLMServer,
    process_gone,
    wait_until_gone,
)


@pytest.fixture(scope="module")
def server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    workdir = tmp_path_factory.mktemp("flood")
    with picolm_files.serve(workdir, picolm={"timeout_seconds": 4}) as running:
        yield running


def chat(server: PicoLMServer, content: str, **extra: object) -> httpx.Response:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)


def healthy_after(server: PicoLMServer, tag: str) -> None:
    wait_until_gone([run.pid for run in server.runs_with(tag)], timeout=30)
    response = chat(server, "[[reply:still here]]")
    assert response.json()["choices"][0]["message"]["content"] == "still here"
    health = httpx.get(f"{server.base_url}/health").json()
    assert health["status"] == "ok" and health["running"] == 0 and health["queued"] == 0


@pytest.mark.parametrize("max_tokens", [4, 400])
def test_stdout_flood_stops_the_engine(server: PicoLMServer, max_tokens: int) -> None:
    tag = marker()
    response = chat(server, f"{tag} [[flood]]", max_tokens=max_tokens)
    error = assert_error(response, 500, type_="server_error", code="engine_error")
    assert "token budget" in error["message"]
    assert "wrote over" in server.log()
    healthy_after(server, tag)


def test_stdout_flood_streamed_ends_with_an_error_event(server: PicoLMServer) -> None:
    tag = marker()
    response = chat(server, f"{tag} [[flood]]", stream=True)
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    assert "[DONE]" not in payloads
    last = json.loads(payloads[-1])
    assert last["error"]["code"] == "engine_error"
    healthy_after(server, tag)


def test_stderr_flood_runs_into_the_time_limit_while_health_answers(
    server: PicoLMServer,
) -> None:
    tag = marker()
    outcome: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: outcome.append(chat(server, f"{tag} [[flood-stderr]]")), daemon=True
    )
    request.start()
    engine = server.wait_for_run(tag)
    answered_during_flood = 0
    while request.is_alive():
        health = httpx.get(f"{server.base_url}/health", timeout=60)
        assert health.status_code == 200
        if request.is_alive() and not process_gone(engine.pid):
            answered_during_flood += 1
    request.join()
    assert answered_during_flood > 0
    assert_error(outcome[0], 504, type_="timeout_error", code="timeout")
    healthy_after(server, tag)
