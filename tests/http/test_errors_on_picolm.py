"""Errors that need the PicoLM engine's process, on a real server driving the stand-in:
the engine crashing or not starting, its time limit, a full queue, a client that leaves
(the engine and its children end with the request)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.http.test_errors import assert_error, marker
from tests.http.test_requests import AUTH, post_chat, sse_payloads, user
from tests.support.picolm_setup import (
    MODEL_ID,
    PicoLMFiles,
    PicoLMServer,
    process_gone,
    wait_until_gone,
)


@pytest.fixture(scope="module")
def client(picolm_server: PicoLMServer) -> openai.OpenAI:
    return picolm_server.client(max_retries=0, timeout=30)


# ---- 500: the engine fails -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directive", "expected"), [("[[crash]]", "status 3"), ("[[segv]]", "SIGSEGV")]
)
def test_engine_crash_then_server_goes_on(
    client: openai.OpenAI, picolm_server: PicoLMServer, directive: str, expected: str
) -> None:
    response = post_chat(picolm_server, {"messages": user(directive)})
    error = assert_error(response, 500, type_="server_error", code="engine_error")
    assert expected in error["message"]
    # The engine's stderr is for the log, not for the client.
    assert "simulated engine failure" not in error["message"]
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL_ID, messages=user(directive))
    completion = client.chat.completions.create(model=MODEL_ID, messages=user("[[reply:ok]]"))
    assert completion.choices[0].message.content == "ok"
    health = httpx.get(f"{picolm_server.base_url}/health").json()
    assert health["running"] == 0 and health["queued"] == 0


def test_engine_that_cannot_start(picolm_files: PicoLMFiles, tmp_path: Path) -> None:
    """A model file that PicoLM cannot load: every request fails, the server stays up."""
    model = tmp_path / "broken.gguf"
    model.write_bytes(picolm_files.model.read_bytes())
    with picolm_files.serve(tmp_path, picolm={"model_path": str(model)}) as server:
        model.write_bytes(b"GGUF not really")
        response = post_chat(server, {"messages": user("hi")})
        error = assert_error(response, 500, type_="server_error", code="engine_error")
        assert error["message"] == "The PicoLM engine exited with status 1."
        # What PicoLM said is in the server log.
        assert "Failed to load model" in server.log()
        assert httpx.get(f"{server.base_url}/health").status_code == 200


# ---- 504, 429, and clients that leave ---------------------------------------------------


@pytest.fixture(scope="module")
def limits_server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    """One generation at a time, one waiting, and a short time limit."""
    workdir = tmp_path_factory.mktemp("limits-server")
    with picolm_files.serve(
        workdir, server={"max_queue": 1}, picolm={"timeout_seconds": 1.5}
    ) as server:
        yield server


def test_timeout(limits_server: PicoLMServer) -> None:
    tag = marker()
    response = post_chat(limits_server, {"messages": user(f"{tag} [[child]] [[hang]]")})
    error = assert_error(response, 504, type_="timeout_error", code="timeout")
    assert "1.5" in error["message"]
    run = limits_server.wait_for_run(tag, children=1)
    wait_until_gone([run.pid, *run.child_pids], timeout=5)


def test_timeout_in_stream_is_an_error_event(limits_server: PicoLMServer) -> None:
    response = post_chat(limits_server, {"messages": user("[[hang]]"), "stream": True})
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    assert json.loads(payloads[-1])["error"]["code"] == "timeout"


def health(server: PicoLMServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.base_url}/health").json()
    return body


def wait_for_health(server: PicoLMServer, **expected: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = health(server)
        if all(state[key] == value for key, value in expected.items()):
            return
        time.sleep(0.02)
    raise AssertionError(f"health never showed {expected}: {health(server)}")


def test_queue_full_is_429_and_a_client_leaving_the_queue_frees_its_place(
    limits_server: PicoLMServer,
) -> None:
    running_tag, queued_tag = marker(), marker()
    with httpx.Client(base_url=limits_server.base_url, timeout=30) as http:
        # A generation that holds the only slot (its stream is kept open, unread).
        body = {"model": MODEL_ID, "messages": user(f"{running_tag} [[slow:0.2]]")}
        with http.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True, "max_tokens": 500}
        ) as running:
            assert running.status_code == 200
            wait_for_health(limits_server, running=1)
            # A second request waits in the queue until its client gives up.
            queued_error: list[BaseException] = []

            def queued_request() -> None:
                try:
                    httpx.post(
                        f"{limits_server.base_url}/v1/chat/completions",
                        json={"model": MODEL_ID, "messages": user(f"{queued_tag} hi")},
                        timeout=httpx.Timeout(30, read=1.0),
                    )
                except httpx.ReadTimeout as exc:
                    queued_error.append(exc)

            thread = threading.Thread(target=queued_request)
            thread.start()
            wait_for_health(limits_server, queued=1)
            # The queue (max_queue: 1) is full: refused at once, with Retry-After.
            response = http.post("/v1/chat/completions", json=body)
            error = assert_error(
                response, 429, type_="rate_limit_error", code="rate_limit_exceeded"
            )
            assert int(response.headers["Retry-After"]) >= 1
            assert "busy" in error["message"]
            thread.join()
            assert queued_error, "the queued request should have timed out on the client"
            # The client that left is out of the queue; it never reached the engine.
            wait_for_health(limits_server, queued=0, running=1)
            assert not limits_server.runs_with(queued_tag)
    wait_for_health(limits_server, queued=0, running=0)
    run = limits_server.wait_for_run(running_tag)
    wait_until_gone([run.pid], timeout=5)


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_ends_the_engine(picolm_server: PicoLMServer, stream: bool) -> None:
    """The engine process and the child it started end when the client goes away: the
    run, hundreds of slow tokens long, is still going when the client leaves, and it is
    ended by the server, not by finishing (a run that finishes logs its exit)."""
    tag = marker()
    body = {
        "model": MODEL_ID,
        "messages": user(f"{tag} [[child]] [[slow:0.05]]"),
        "max_tokens": 2000,
        "stream": stream,
    }
    with httpx.Client(base_url=picolm_server.base_url, headers=AUTH, timeout=30) as http:
        if stream:
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")
                run = picolm_server.wait_for_run(tag, children=1)
                assert not process_gone(run.pid)
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=1))
            run = picolm_server.wait_for_run(tag, children=1)
    pids = [run.pid, *run.child_pids]
    wait_until_gone(pids, timeout=10)
    ended = next(entry for entry in picolm_server.history() if entry.pid == run.pid)
    assert ended.exit is None, f"the engine ran to its end ({ended.exit}) after the client left"
    wait_for_health(picolm_server, running=0, queued=0)
