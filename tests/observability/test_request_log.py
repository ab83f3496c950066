"""The request log and X-Request-ID, on the app in-process over a scripted engine, with
logging set up as the command line sets it up (server/logging_setup.py) to write JSON
or text lines to a file: the fields and their values, text lines, ids. What needs the
process (its start-up lines, its stdout, a client that goes away) is in
test_request_log_on_picolm.py."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from picolm_server.config.settings import LoggingSection
from picolm_server.server.logging_setup import configure_logging
from tests.http.test_requests import sse_payloads, user
from tests.support.inprocess import InProcessServer, serve_in_process
from tests.support.picolm_setup import MODEL_ID

pytestmark = pytest.mark.anyio

# The loggers configure_logging changes, restored after each test.
_CONFIGURED = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "picolm_server.access")


@pytest.fixture
def configured_logging() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _CONFIGURED]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    try:
        yield
    finally:
        for lg, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.handlers[:] = handlers
            lg.level, lg.propagate, lg.disabled = level, propagate, disabled


def log_to(path: Path, **section: Any) -> LoggingSection:
    """Logging set up as the command line does from ``logging:``, into ``path``."""
    settings = LoggingSection(**{"output": str(path), **section})
    configure_logging(settings)
    return settings


def log_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines, "the log file is empty"
    return lines


def log_entries(path: Path) -> list[dict[str, Any]]:
    """Every line of the log file, each parsed as one JSON object."""
    return [json.loads(line) for line in log_lines(path)]


def entry_for(path: Path, request_id: str) -> dict[str, Any]:
    """The request log line with this id: written by the time its response is complete."""
    found = [entry for entry in log_entries(path) if entry.get("request_id") == request_id]
    assert len(found) == 1, f"{len(found)} lines for {request_id}"
    return found[0]


@pytest.fixture
def json_log_path(tmp_path: Path, configured_logging: None) -> Path:
    path = tmp_path / "requests.jsonl"
    log_to(path, format="json", log_requests=True)
    return path


@pytest.fixture
async def json_server(json_log_path: Path) -> AsyncIterator[InProcessServer]:
    """The app with no key, as the process-based request log tests ran it."""
    async with serve_in_process(server={"api_key": ""}, logging={"log_requests": True}) as server:
        yield server


async def chat(server: InProcessServer, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await server.http().post(
        "/v1/chat/completions", json={"model": MODEL_ID, **body}, headers=headers
    )


async def test_every_line_is_one_json_object(
    json_server: InProcessServer, json_log_path: Path
) -> None:
    await json_server.http().get("/v1/models")
    entries = log_entries(json_log_path)
    assert any(entry.get("logger") == "picolm_server.access" for entry in entries)
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_chat_request_is_logged_with_its_usage(
    json_server: InProcessServer, json_log_path: Path, stream: bool
) -> None:
    request_id = f"test-{uuid.uuid4().hex}"
    body: dict[str, Any] = {"messages": user("[[reply:one two three]]"), "max_tokens": 10}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    response = await chat(json_server, body, **{"X-Request-ID": request_id})
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


async def test_a_request_without_generation_has_no_token_fields(
    json_server: InProcessServer, json_log_path: Path
) -> None:
    response = await json_server.http().get("/v1/models/no-such-model")
    assert response.status_code == 404
    entry = entry_for(json_log_path, response.headers["x-request-id"])
    assert entry["status"] == 404
    assert entry["route"] == "/v1/models/{model_id:path}"
    assert entry["path"] == "/v1/models/no-such-model"
    assert entry["prompt_tokens"] is None
    assert entry["ttft_ms"] is None
    assert entry["duration_ms"] > 0


async def test_an_unknown_model_is_logged_with_the_model_asked_for(
    json_server: InProcessServer, json_log_path: Path
) -> None:
    response = await chat(json_server, {"model": "gpt-nothing", "messages": user("hi")})
    assert response.status_code == 404
    entry = entry_for(json_log_path, response.headers["x-request-id"])
    assert entry["model"] == "gpt-nothing"
    assert entry["prompt_tokens"] is None


async def test_an_engine_failure_is_logged(
    json_server: InProcessServer, json_log_path: Path
) -> None:
    response = await chat(json_server, {"messages": user("[[crash]]")})
    assert response.status_code == 500
    entry = entry_for(json_log_path, response.headers["x-request-id"])
    assert entry["status"] == 500
    assert entry["engine_error"] == "error"
    assert entry["prompt_tokens"] is not None


# ---- X-Request-ID ---------------------------------------------------------------------------


async def test_an_id_is_generated_for_every_response(json_server: InProcessServer) -> None:
    ids = set()
    for path in ("/health", "/v1/models", "/nowhere"):
        response = await json_server.http().get(path)
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
        ids.add(response.headers["x-request-id"])
    assert len(ids) == 3


@pytest.mark.parametrize(
    "sent",
    ["x" * 129, "two words", 'quote"d', "new\\nline", "tab\there", "é-accent"],
)
async def test_an_unreasonable_id_is_replaced(json_server: InProcessServer, sent: str) -> None:
    response = await json_server.http().get(
        "/health", headers={"X-Request-ID": sent.encode("utf-8")}
    )
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_a_reasonable_id_is_kept(json_server: InProcessServer) -> None:
    for sent in ("0b6f3c2e-8a4d-4c1e-9f7a-2d5b8e1c3a90", "a" * 128, "abc.DEF_1:2/3+4=@~"):
        response = await json_server.http().get("/health", headers={"X-Request-ID": sent})
        assert response.headers["x-request-id"] == sent


# ---- text lines, and turning the log off -------------------------------------------------


async def test_text_lines(tmp_path: Path, configured_logging: None) -> None:
    log_path = tmp_path / "server.log"
    log_to(log_path, format="text", log_requests=True)
    async with serve_in_process(server={"api_key": ""}) as server:
        response = await chat(server, {"messages": user("[[reply:alpha beta]]")})
    request_id = response.headers["x-request-id"]
    line = next(line for line in log_lines(log_path) if request_id in line)
    usage = response.json()["usage"]
    assert "INFO    picolm_server.access: POST /v1/chat/completions 200" in line
    assert f"model={MODEL_ID}" in line
    assert f"tokens={usage['prompt_tokens']}+{usage['completion_tokens']} cached=0" in line
    assert "ttft=" in line


async def test_log_requests_false_writes_no_request_lines(
    tmp_path: Path, configured_logging: None
) -> None:
    log_path = tmp_path / "server.jsonl"
    section = log_to(log_path, format="json", log_requests=False)
    logging.getLogger("picolm_server.test").warning("not a request's line")
    async with serve_in_process(
        server={"api_key": ""}, logging={"log_requests": section.log_requests}
    ) as server:
        response = await server.http().get("/v1/models")
        assert response.headers["x-request-id"]  # the id is there all the same
        await chat(server, {"messages": user("[[reply:hello]]")})
    loggers = [entry["logger"] for entry in log_entries(log_path)]
    assert "picolm_server.test" in loggers  # the log itself is written
    assert "picolm_server.access" not in loggers
