"""The request log and X-Request-ID, over HTTP, on a real server driving the PicoLM
stand-in: JSON lines in a file, the fields and their values, text lines, ids."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http.test_requests import sse_payloads, user
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


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_request_is_logged_with_its_usage(
    json_server: PicoLMServer, json_log_path: Path, stream: bool
) -> None:
    request_id = f"test-{uuid.uuid4().hex}"
    body: dict[str, Any] = {"messages": user("[[reply:one two three]]"), "max_tokens": 10}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    response = chat(json_server, body, **{"X-Request-ID": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    if stream:
        usage = json.loads(sse_payloads(response.text)[-2])["usage"]
    else:
        usage = response.json()["usage"]

    entry = entry_for(json_log_path, request_id)
    assert entry["logger"] == "picolm_server.access"
    assert entry["method"] == "POST"
    assert entry["route"] == "/v1/chat/completions"
    assert entry["status"] == 200
    assert entry["model"] == MODEL_ID
    assert entry["prompt_tokens"] == usage["prompt_tokens"] > 0
    assert entry["completion_tokens"] == usage["completion_tokens"] > 0
    assert entry["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert 0 < entry["ttft_ms"] <= entry["duration_ms"]
    assert entry["disconnected"] is False
    assert entry["engine_error"] is None


def test_a_request_without_generation_has_no_token_fields(
    json_server: PicoLMServer, json_log_path: Path
) -> None:
    response = httpx.get(f"{json_server.base_url}/v1/models/no-such-model")
    assert response.status_code == 404
    entry = entry_for(json_log_path, response.headers["x-request-id"])
    assert entry["status"] == 404
    assert entry["route"] == "/v1/models/{model_id:path}"
    assert entry["path"] == "/v1/models/no-such-model"
    assert entry["prompt_tokens"] is None
    assert entry["ttft_ms"] is None
    assert entry["duration_ms"] > 0


def test_an_unknown_model_is_logged_with_the_model_asked_for(
    json_server: PicoLMServer, json_log_path: Path
) -> None:
    response = chat(json_server, {"model": "gpt-nothing", "messages": user("hi")})
    assert response.status_code == 404
    entry = entry_for(json_log_path, response.headers["x-request-id"])
    assert entry["model"] == "gpt-nothing"
    assert entry["prompt_tokens"] is None


def test_an_engine_failure_is_logged(json_server: PicoLMServer, json_log_path: Path) -> None:
    response = chat(json_server, {"messages": user("[[crash]]")})
    assert response.status_code == 500
    entry = entry_for(json_log_path, response.headers["x-request-id"])
    assert entry["status"] == 500
    assert entry["engine_error"] == "error"
    assert entry["prompt_tokens"] is not None


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


# ---- X-Request-ID ---------------------------------------------------------------------------


def test_an_id_is_generated_for_every_response(json_server: PicoLMServer) -> None:
    ids = set()
    for path in ("/health", "/v1/models", "/nowhere"):
        response = httpx.get(f"{json_server.base_url}{path}")
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
        ids.add(response.headers["x-request-id"])
    assert len(ids) == 3


@pytest.mark.parametrize(
    "sent",
    ["x" * 129, "two words", 'quote"d', "new\\nline", "tab\there", "é-accent"],
)
def test_an_unreasonable_id_is_replaced(json_server: PicoLMServer, sent: str) -> None:
    response = httpx.get(
        f"{json_server.base_url}/health", headers={"X-Request-ID": sent.encode("utf-8")}
    )
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_a_reasonable_id_is_kept(json_server: PicoLMServer) -> None:
    for sent in ("0b6f3c2e-8a4d-4c1e-9f7a-2d5b8e1c3a90", "a" * 128, "abc.DEF_1:2/3+4=@~"):
        response = httpx.get(f"{json_server.base_url}/health", headers={"X-Request-ID": sent})
        assert response.headers["x-request-id"] == sent


# ---- text lines, and turning the log off -------------------------------------------------


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
