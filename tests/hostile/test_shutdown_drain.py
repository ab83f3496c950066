"""SIGTERM and SIGINT drain the server: no new requests, running generations finish
within ``server.shutdown_timeout``, the rest end properly (an error event then
``[DONE]``; a JSON 503), no engine process outlives the server, and it exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http.test_requests import sse_payloads
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer, wait_until_gone


def marker() -> str:
    return f"id-{uuid.uuid4().hex[:12]}"


class BackgroundRequest(threading.Thread):
    """One chat completion sent from another thread; ``first_byte`` is set once the
    response has started (for a stream: the first event)."""

    def __init__(self, server: PicoLMServer, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url = f"{server.base_url}/v1/chat/completions"
        self.body = {"model": MODEL_ID, **body}
        self.first_byte = threading.Event()
        self.status = 0
        self.content_type = ""
        self.raw = b""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url, json=self.body, timeout=60) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                for data in response.iter_raw():
                    self.raw += data
                    self.first_byte.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.first_byte.set()

    def finish(self) -> None:
        self.join(timeout=60)
        assert not self.is_alive(), "the request never ended"
        assert self.error is None, repr(self.error)


def stop(server: PicoLMServer, signum: int) -> int:
    server.process.send_signal(signum)
    return server.process.wait(timeout=60)


def wait_for_log(server: PicoLMServer, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.02)


def slow_prompt(tag: str, seconds: float, *, child: bool = True) -> list[dict[str, str]]:
    """A slow generation; with ``child``, PicoLM starts a child process first."""
    extra = " [[child]]" if child else ""
    return [{"role": "user", "content": f"[[slow:{seconds}]]{extra} {tag}"}]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_running_stream_finishes_within_the_shutdown_timeout(
    picolm_files: PicoLMFiles, tmp_path: Path, signum: int
) -> None:
    with picolm_files.serve(tmp_path, server={"shutdown_timeout": 60}) as server:
        tag = marker()
        stream = BackgroundRequest(
            server,
            {"messages": slow_prompt(tag, 0.1, child=False), "max_tokens": 12, "stream": True},
        )
        stream.start()
        assert stream.first_byte.wait(30)
        run = server.wait_for_run(tag)
        server.process.send_signal(signum)
        wait_for_log(server, "stopping")
        # No new connection is taken once the drain has begun.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.base_url}/health", timeout=5)
        stream.finish()
        assert server.process.wait(timeout=60) == 0
        wait_until_gone([run.pid, *run.child_pids], timeout=10)
    payloads = sse_payloads(stream.raw.decode())
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert all("error" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert len(content.split()) == 12


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_requests_still_running_after_the_timeout_end_with_a_proper_error(
    picolm_files: PicoLMFiles, tmp_path: Path, signum: int
) -> None:
    config = {"shutdown_timeout": 1, "max_concurrent": 2, "max_queue": 4}
    with picolm_files.serve(tmp_path, server=config) as server:
        stream_tag, plain_tag, queued_tag = marker(), marker(), marker()
        long = {"max_tokens": 500}
        stream = BackgroundRequest(
            server, {"messages": slow_prompt(stream_tag, 0.2), "stream": True, **long}
        )
        plain = BackgroundRequest(server, {"messages": slow_prompt(plain_tag, 0.2), **long})
        queued = BackgroundRequest(server, {"messages": slow_prompt(queued_tag, 0.2), **long})
        stream.start()
        plain.start()
        runs = [server.wait_for_run(tag, children=1) for tag in (stream_tag, plain_tag)]
        queued.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.base_url}/health").json()["queued"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert stream.first_byte.wait(30)

        assert stop(server, signum) == 0
        for request in (stream, plain, queued):
            request.finish()
        wait_until_gone([pid for run in runs for pid in (run.pid, *run.child_pids)], 10)
        assert not server.runs_with(queued_tag), "a queued request started during the drain"
    assert "Traceback" not in server.log()

    payloads = sse_payloads(stream.raw.decode())
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
    for request in (plain, queued):
        assert request.status == 503, request.raw
        assert request.content_type.startswith("application/json")
        body = json.loads(request.raw)
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == "server_shutting_down"
