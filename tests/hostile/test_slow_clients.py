"""Slow clients cannot hold the server: headers must arrive within
``server.header_timeout``, a body within ``server.body_timeout``, and connections past
``server.max_connections`` are answered with a 503 in the envelope. Meanwhile everybody
else is served."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_API_KEY
from tests.http.test_errors import assert_error
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer

# How long a test waits for the server to act before calling it a failure: a guard
# against hanging, far above the configured limits, not a performance threshold.
PATIENCE = 60.0
REQUEST_START = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture(scope="module")
def strict_server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    workdir = tmp_path_factory.mktemp("slow-clients")
    limits = {"header_timeout": 1, "body_timeout": 1, "max_connections": 40}
    with picolm_files.serve(workdir, server=limits) as server:
        yield server


def connect(server: PicoLMServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Keep sending header bytes, slowly, until the server closes the connection."""
    deadline = time.monotonic() + PATIENCE
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"X")
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset or broken pipe: closed
            return True
    return False


def serves_others(server: PicoLMServer) -> None:
    assert httpx.get(f"{server.base_url}/health", timeout=PATIENCE).status_code == 200
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": MODEL_ID, "messages": [{"role": "user", "content": "[[reply:ok]]"}]},
        timeout=PATIENCE,
    )
    assert response.status_code == 200, response.text


def test_trickled_headers_are_cut_off(strict_server: PicoLMServer) -> None:
    socks = [connect(strict_server) for _ in range(20)]
    try:
        for sock in socks:
            sock.sendall(REQUEST_START + b"X-Slow: ")
        serves_others(strict_server)
        assert all(closed_by_server(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()
    serves_others(strict_server)


def test_silent_connection_is_closed(strict_server: PicoLMServer) -> None:
    with contextlib.closing(connect(strict_server)) as sock:
        assert sock.recv(4096) == b""


def test_next_request_on_a_kept_alive_connection_is_bounded_too(
    strict_server: PicoLMServer,
) -> None:
    with contextlib.closing(connect(strict_server)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        assert closed_by_server(sock)


def test_trickled_body_gets_a_408(strict_server: PicoLMServer) -> None:
    body = json.dumps({"model": MODEL_ID, "messages": []}).encode()
    with contextlib.closing(connect(strict_server)) as sock:
        sock.sendall(
            REQUEST_START
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), response
    error = json.loads(payload)["error"]
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    serves_others(strict_server)


def test_connections_past_the_limit_get_a_503(picolm_files: PicoLMFiles, tmp_path: Path) -> None:
    limits = {"max_connections": 3, "api_key": TEST_API_KEY}
    with picolm_files.serve(tmp_path, server=limits) as server:
        held = [connect(server) for _ in range(3)]
        try:
            # The three are accepted before the next one is counted.
            for sock in held:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            response = httpx.get(f"{server.base_url}/v1/models", timeout=PATIENCE)
            error = assert_error(response, 503, type_="server_error", code="too_many_connections")
            assert error["param"] is None
            assert response.headers["connection"] == "close"
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + PATIENCE
        while True:
            response = httpx.get(
                f"{server.base_url}/v1/models",
                headers={"Authorization": f"Bearer {TEST_API_KEY}"},
                timeout=PATIENCE,
            )
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert response.status_code == 200
