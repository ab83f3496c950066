"""The request log on a real server driving the PicoLM stand-in, where the process is the
point: the log file the command line sets up (its start-up lines beside the request
lines), text lines on the process's stdout, a client that leaves mid-stream (a socket
that closes), and ``log_requests: false``. The fields of a request's line and
X-Request-ID are in test_request_log.py, in-process."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http.test_requests import user
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer


@pytest.fixture(scope="module")
def json_log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("json-log") / "requests.jsonl"


@pytest.fixture(scope="module")
def json_server(
    picolm_files: PicoLMFiles, json_log_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    workdir = tmp_path_factory.mktemp("json-log-server")
    logging = {"format": "json", "output": str(json_log_path), "log_requests": True}
    with picolm_files.serve(workdir, logging=logging) as server:
        yield server


def log_entries(path: Path) -> list[dict[str, Any]]:
    """Every line of the log file, each parsed as one JSON object."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines, "the log file is empty"
    return [json.loads(line) for line in lines]


def entry_for(path: Path, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The request log line with this id (waiting for it to be written, up to a bound)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [entry for entry in log_entries(path) if entry.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{len(found)} lines for {request_id}"
            return found[0]
        time.sleep(0.02)


def chat(server: PicoLMServer, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": MODEL_ID, **body},
        headers=headers,
        timeout=30,
    )


def test_every_line_is_one_json_object(json_server: PicoLMServer, json_log_path: Path) -> None:
    httpx.get(f"{json_server.base_url}/v1/models")
    entries = log_entries(json_log_path)
    assert any(entry.get("logger") == "picolm_server.access" for entry in entries)
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)


def test_a_client_that_leaves_mid_stream_is_logged_as_disconnected(
    json_server: PicoLMServer, json_log_path: Path
) -> None:
    request_id = f"leaving-{uuid.uuid4().hex}"
    body = {
        "model": MODEL_ID,
        "messages": user("[[slow:0.05]]"),
        "max_tokens": 2000,
        "stream": True,
    }
    with (
        httpx.Client(base_url=json_server.base_url, timeout=30) as http,
        http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"X-Request-ID": request_id}
        ) as response,
    ):
        for line in response.iter_lines():  # up to the first token
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get(
                "content"
            ):
                break
    entry = entry_for(json_log_path, request_id)
    assert entry["disconnected"] is True
    assert entry["status"] == 200
    assert 0 < entry["completion_tokens"] < 2000


def test_text_lines_on_stdout(picolm_files: PicoLMFiles, tmp_path: Path) -> None:
    logging = {"format": "text", "output": "stdout", "log_requests": True}
    with picolm_files.serve(tmp_path, logging=logging) as server:
        response = chat(server, {"messages": user("[[reply:alpha beta]]")})
        request_id = response.headers["x-request-id"]
        deadline = time.monotonic() + 10
        while request_id not in server.log() and time.monotonic() < deadline:
            time.sleep(0.02)
        line = next(line for line in server.log().splitlines() if request_id in line)
    usage = response.json()["usage"]
    assert "POST /v1/chat/completions 200" in line
    assert f"model={MODEL_ID}" in line
    assert f"tokens={usage['prompt_tokens']}+{usage['completion_tokens']} cached=0" in line
    assert "ttft=" in line


def test_log_requests_false_writes_no_request_lines(
    picolm_files: PicoLMFiles, tmp_path: Path
) -> None:
    log_path = tmp_path / "server.jsonl"
    logging = {"format": "json", "output": str(log_path), "log_requests": False}
    with picolm_files.serve(tmp_path, logging=logging) as server:
        response = httpx.get(f"{server.base_url}/v1/models")
        assert response.headers["x-request-id"]  # the id is there all the same
        chat(server, {"messages": user("[[reply:hello]]")})
    entries = log_entries(log_path)  # the startup lines are there
    assert not [entry for entry in entries if entry["logger"] == "picolm_server.access"]
