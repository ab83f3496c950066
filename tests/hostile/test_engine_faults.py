"""Each way an engine can fail fails one request, with the right status and OpenAI's
envelope (an error event, then the end of the stream, once a stream has started), and
leaves a healthy server: the next request is served, no engine process is left, /health
answers. What the engine wrote on stderr goes to the server log, never to the client.

PicoLM faults come from the stand-in executable (tests/support/fake_picolm.py). The
llama.cpp engine runs in this process: its faults are injected into the real model
object (a step that raises, bytes that are not UTF-8, a model that never stops); it has
no process to be killed or to exit, and a step that blocks cannot be interrupted (the
request ends when the step does).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import requires_llama
from tests.http.test_errors import assert_error, marker
from tests.http.test_requests import sse_payloads
from tests.support.fake_picolm import SECRET_STDERR
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer, wait_until_gone


@pytest.fixture(scope="module")
def server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    workdir = tmp_path_factory.mktemp("faults")
    with picolm_files.serve(workdir, picolm={"timeout_seconds": 4}) as running:
        yield running


def chat(server: PicoLMServer, content: str, **extra: Any) -> httpx.Response:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)


def assert_failed(
    response: httpx.Response, *, stream: bool, status: int, type_: str, code: str
) -> dict[str, Any]:
    """One failed request: the status and envelope, or (streamed, once the 200 is sent)
    the error event as the stream's last event, with no [DONE] after it."""
    if not stream or response.status_code != 200:
        return assert_error(response, status, type_=type_, code=code)
    payloads = sse_payloads(response.text)
    assert "[DONE]" not in payloads
    last = json.loads(payloads[-1])
    assert set(last) == {"error"}
    error: dict[str, Any] = last["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (type_, code)
    # Every event before it is an ordinary chunk.
    assert all(json.loads(p)["object"] == "chat.completion.chunk" for p in payloads[:-1])
    return error


def assert_healthy_after(server: PicoLMServer, tag: str) -> None:
    runs = server.runs_with(tag)
    assert runs, "the failing request never reached the engine"
    wait_until_gone([run.pid for run in runs], timeout=30)
    response = chat(server, "[[reply:still here]]")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "still here"
    health = httpx.get(f"{server.base_url}/health")
    assert health.status_code == 200
    assert health.json()["running"] == 0 and health.json()["queued"] == 0


# (directive, what the client is told)
EXITS = [
    ("[[crash]]", "exited with status 3"),
    ("[[exit:1]]", "exited with status 1"),
    ("[[exit:2]]", "exited with status 2"),
    ("[[exit:127]]", "exited with status 127"),
    ("[[exit:255]]", "exited with status 255"),
    ("[[segv]]", "was killed by SIGSEGV"),
    ("[[abort]]", "was killed by SIGABRT"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("directive", "told"), EXITS)
def test_engine_that_fails_mid_reply(
    server: PicoLMServer, directive: str, told: str, stream: bool
) -> None:
    tag = marker()
    response = chat(server, f"{tag} {directive}", stream=stream)
    error = assert_failed(
        response, stream=stream, status=500, type_="server_error", code="engine_error"
    )
    assert told in error["message"]
    assert "/home/alice" not in error["message"] and "private" not in error["message"]
    assert_healthy_after(server, tag)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [1, 2, 127])
def test_engine_that_fails_before_the_prompt(
    server: PicoLMServer, status: int, stream: bool
) -> None:
    tag = marker()
    response = chat(server, f"{tag} [[exit-early:{status}]]", stream=stream)
    # Nothing was sent yet: even a streamed request gets its status.
    error = assert_error(response, 500, type_="server_error", code="engine_error")
    assert error["message"] == f"The PicoLM engine exited with status {status}."
    assert_healthy_after(server, tag)


@pytest.mark.parametrize("stream", [False, True])
def test_engine_killed_from_outside(server: PicoLMServer, stream: bool) -> None:
    tag = marker()
    outcome: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: outcome.append(chat(server, f"{tag} [[slow:0.2]]", stream=stream))
    )
    request.start()
    engine = server.wait_for_run(tag)
    os.kill(engine.pid, signal.SIGKILL)  # as the kernel's OOM killer would
    request.join()
    error = assert_failed(
        outcome[0], stream=stream, status=500, type_="server_error", code="engine_error"
    )
    assert "SIGKILL" in error["message"]
    assert_healthy_after(server, tag)


@pytest.mark.parametrize("stream", [False, True])
def test_engine_that_hangs(server: PicoLMServer, stream: bool) -> None:
    tag = marker()
    response = chat(server, f"{tag} [[hang]] [[child]]", stream=stream)
    assert_failed(response, stream=stream, status=504, type_="timeout_error", code="timeout")
    runs = server.runs_with(tag)
    wait_until_gone(runs[0].child_pids, timeout=30)
    assert_healthy_after(server, tag)


@pytest.mark.parametrize("stream", [False, True])
def test_engine_output_that_is_not_utf8(server: PicoLMServer, stream: bool) -> None:
    tag = marker()
    response = chat(server, f"{tag} [[garbage]]", stream=stream)
    assert response.status_code == 200
    if stream:
        payloads = sse_payloads(response.text)
        assert payloads[-1] == "[DONE]"
        chunks = [json.loads(payload) for payload in payloads[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    else:
        text = response.json()["choices"][0]["message"]["content"]
    # Each invalid sequence is one U+FFFD; the rest (control characters too) is kept.
    assert text == "\ufffdok\ufffd\ufffd\ufffd\ufffd\x00\x1b[2J\r end"
    assert_healthy_after(server, tag)


def test_stderr_goes_to_the_log_not_to_the_client(server: PicoLMServer) -> None:
    tag = marker()
    response = chat(server, f"{tag} [[exit:7]]")
    error = assert_error(response, 500, type_="server_error", code="engine_error")
    assert error["message"] == "The PicoLM engine exited with status 7."
    assert SECRET_STDERR not in response.text
    log = server.log()
    assert SECRET_STDERR in log
    pid = server.runs_with(tag)[0].pid
    assert f"picolm (pid {pid}) exited with status 7" in log


def test_a_second_fault_right_after_the_first(server: PicoLMServer) -> None:
    tags = [marker(), marker()]
    for tag in tags:
        response = chat(server, f"{tag} [[crash]]")
        assert_error(response, 500, type_="server_error", code="engine_error")
    for tag in tags:
        assert_healthy_after(server, tag)


# ---- llama.cpp, in process --------------------------------------------------------------


class FaultyModel:
    """The decode loop's real llama.cpp calls (``ModelContext``) with faults scripted
    from the prompt's text: after two tokens ``[[crash]]`` raises, ``[[garbage]]`` turns
    tokens into bytes that are not UTF-8, ``[[runaway]]`` never samples EOS."""

    def __init__(self, model: Any, detokenize: Any, word: int) -> None:
        self._model = model
        self._detokenize = detokenize
        self._word = word
        self._garbage = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def sample(self, job: Any, row: int) -> int:
        prompt = self._detokenize([int(t) for t in job.prompt])
        self._garbage = "[[garbage]]" in prompt
        if "[[runaway]]" in prompt:
            return self._word
        if "[[crash]]" in prompt and job.generated == 2:
            raise RuntimeError(SECRET_STDERR)
        token: int = self._model.sample(job, row)
        return token

    def piece(self, token: int) -> bytes:
        if self._garbage:
            return b"\xff\xc3"
        piece: bytes = self._model.piece(token)
        return piece


@dataclass
class InProcessServer:
    base_url: str
    log: list[str]


@pytest.fixture(scope="module")
def llama_faults() -> Iterator[InProcessServer]:
    pytest.importorskip("llama_cpp")
    import logging

    import uvicorn

    from picolm_server.config.settings import Settings
    from picolm_server.engines.llama_cpp.engine import LlamaCppEngine
    from picolm_server.server.app import create_app
    from picolm_server.server.bootstrap import build_core
    from tests.support.server import free_port

    settings = Settings.from_values(
        {"engine": "llama_cpp", "llama_cpp": {"timeout_seconds": 300, "threads": 2}}
    )
    core = build_core(settings)
    engine = core.models.loaded_engine(core.accept("").model_id)
    assert isinstance(engine, LlamaCppEngine)
    word = engine.tokenize(" word", add_special=False, parse_special=False)[0]
    loop = engine.decode_loop
    loop.model = FaultyModel(loop.model, engine.detokenize, word)  # type: ignore[assignment]
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Collect()
    logging.getLogger("picolm_server").addHandler(handler)
    port = free_port()
    config = uvicorn.Config(create_app(core), host="127.0.0.1", port=port, log_config=None)
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    while not uvicorn_server.started:
        assert thread.is_alive(), "the server did not start"
        threading.Event().wait(0.05)
    try:
        yield InProcessServer(base_url, records)
    finally:
        uvicorn_server.should_exit = True
        thread.join()
        logging.getLogger("picolm_server").removeHandler(handler)
        # The app's lifespan unloaded the model (the engine is closed) on its way out.


def llama_chat(server: InProcessServer, content: str, **extra: Any) -> httpx.Response:
    body = {
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 16,
        **extra,
    }
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=300)


def assert_llama_healthy(server: InProcessServer) -> None:
    response = llama_chat(server, "Say hello.", max_tokens=4)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    health = httpx.get(f"{server.base_url}/health").json()
    assert health["status"] == "ok" and health["running"] == 0 and health["queued"] == 0


@requires_llama
@pytest.mark.parametrize("stream", [False, True])
def test_llama_step_that_raises(llama_faults: InProcessServer, stream: bool) -> None:
    response = llama_chat(llama_faults, "[[crash]] Tell a story.", stream=stream)
    error = assert_failed(
        response, stream=stream, status=500, type_="server_error", code="engine_error"
    )
    assert SECRET_STDERR not in error["message"]
    assert any(SECRET_STDERR in line for line in llama_faults.log)
    assert_llama_healthy(llama_faults)


@requires_llama
@pytest.mark.parametrize("stream", [False, True])
def test_llama_output_that_is_not_utf8(llama_faults: InProcessServer, stream: bool) -> None:
    response = llama_chat(llama_faults, "[[garbage]] Tell a story.", max_tokens=3, stream=stream)
    assert response.status_code == 200
    if stream:
        payloads = sse_payloads(response.text)
        assert payloads[-1] == "[DONE]"
        chunks = [json.loads(payload) for payload in payloads[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    else:
        text = response.json()["choices"][0]["message"]["content"]
    assert text and set(text) == {"\ufffd"}
    assert_llama_healthy(llama_faults)


@requires_llama
def test_llama_model_that_never_stops(llama_faults: InProcessServer) -> None:
    response = llama_chat(llama_faults, "[[runaway]] Tell a story.", max_tokens=20)
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 20
    assert_llama_healthy(llama_faults)
