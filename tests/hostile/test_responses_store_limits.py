"""The Responses API's stored responses, as a hostile client and a broken disk try them.

- ``responses.store_max_bytes`` holds in bytes on disk: characters outside ASCII count
  for their UTF-8 bytes, and the file shrinks when old responses are dropped;
- a store file that is not a database is reported (``/health``, a metric, one warning at
  start) instead of every save failing in silence;
- ``limit`` takes ASCII digits only (``²``, ``①``, ``١`` were a 500 or read as numbers);
- a path with a stray slash is a 404, never a redirect built from the ``Host`` header.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from picolm_server.api.responses.store import ResponseStore
from tests.http.test_errors import assert_error
from tests.http.test_requests import AUTH
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer

EMOJI = "\U0001f642"  # 4 bytes in UTF-8, one character


def create(server: Any, headers: dict[str, str] | None = None, **fields: Any) -> httpx.Response:
    body = {"model": MODEL_ID, "input": "[[reply:ok]]", **fields}
    return httpx.post(
        f"{server.base_url}/v1/responses", json=body, headers=headers or {}, timeout=30
    )


def test_the_limit_holds_in_bytes_on_disk(picolm_files: PicoLMFiles, tmp_path: Path) -> None:
    store_path = tmp_path / "store" / "responses.sqlite3"
    limit = 200_000
    with picolm_files.serve(
        tmp_path,
        server={"max_body": 1024 * 1024},
        responses={"store_path": str(store_path), "store_max_bytes": limit},
    ) as server:
        sizes = []
        ids = []
        for n in range(30):
            # 20,000 characters, 80,000 bytes of UTF-8 in each response's metadata.
            response = create(server, metadata={"note": EMOJI * 20_000, "n": str(n)})
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])
            sizes.append(store_path.stat().st_size)
        assert max(sizes) <= limit, sizes
        # The newest is kept; the oldest are gone.
        assert httpx.get(f"{server.base_url}/v1/responses/{ids[-1]}").status_code == 200
        assert httpx.get(f"{server.base_url}/v1/responses/{ids[0]}").status_code == 404


def test_the_file_shrinks_when_responses_are_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = ResponseStore(tmp_path / "s" / "responses.sqlite3", max_bytes=1_000_000)
        for n in range(10):
            await store.save({"id": f"resp_{n}", "note": "x" * 90_000}, [])
        full = store.path.stat().st_size
        for n in range(9):
            assert await store.delete(f"resp_{n}")
        assert store.path.stat().st_size < full / 4
        store.max_bytes = 150_000
        await store.save({"id": "resp_new", "note": "y" * 90_000}, [])
        assert store.path.stat().st_size <= 150_000
        assert await store.get("resp_9") is None and await store.get("resp_new") is not None
        store.close()

    asyncio.run(scenario())


def test_a_store_made_before_auto_vacuum_is_rebuilt_with_it(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old" / "responses.sqlite3"
    path.parent.mkdir(mode=0o700)
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE responses (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
        "response TEXT NOT NULL, context TEXT NOT NULL, size INTEGER NOT NULL)"
    )
    old.execute(
        "INSERT INTO responses (id, response, context, size) VALUES ('resp_old', '{}', '[]', 4)"
    )
    old.commit()
    old.close()
    os.chmod(path, 0o600)

    async def scenario() -> None:
        store = ResponseStore(path)
        assert (await store.get("resp_old")) is not None
        store.close()

    asyncio.run(scenario())
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA auto_vacuum").fetchone() == (1,)
    check.close()


@pytest.fixture()
def broken_store_server(picolm_files: PicoLMFiles, tmp_path: Path) -> Any:
    store_path = tmp_path / "store" / "responses.sqlite3"
    store_path.parent.mkdir(mode=0o700)
    store_path.write_bytes(os.urandom(8192))
    store_path.chmod(0o600)
    with picolm_files.serve(tmp_path, responses={"store_path": str(store_path)}) as server:
        yield server


def test_a_broken_store_is_shown_not_silent(broken_store_server: PicoLMServer) -> None:
    server = broken_store_server
    health = httpx.get(f"{server.base_url}/health")
    # Shown, not a 503: chat and unstored responses still work.
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["response_store"] == "unavailable"
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert 'picolm_response_store_available{engine="picolm"} 0.0' in metrics
    warnings = [line for line in server.log().splitlines() if "is not an SQLite database" in line]
    assert len(warnings) == 1, server.log()
    assert create(server, store=False).status_code == 200
    # A create that cannot be stored still answers, and the store stays unavailable.
    assert create(server).status_code == 200
    assert httpx.get(f"{server.base_url}/health").json()["response_store"] == "unavailable"


def test_a_working_store_is_ok(picolm_server: PicoLMServer) -> None:
    assert create(picolm_server, headers=AUTH).status_code == 200
    health = httpx.get(f"{picolm_server.base_url}/health").json()
    assert health["response_store"] == "ok"


@pytest.mark.parametrize("limit", ["²", "¹", "①", "١", "𝟙", "1²", " 1", "+1", "0x1"])
def test_limit_takes_ascii_digits_only(picolm_server: PicoLMServer, limit: str) -> None:
    stored = create(picolm_server, headers=AUTH).json()["id"]
    response = httpx.get(
        f"{picolm_server.base_url}/v1/responses/{stored}/input_items",
        params={"limit": limit},
        headers=AUTH,
    )
    error = assert_error(response, 400, type_="invalid_request_error")
    assert error["param"] == "limit"
    ok = httpx.get(
        f"{picolm_server.base_url}/v1/responses/{stored}/input_items",
        params={"limit": "1"},
        headers=AUTH,
    )
    assert ok.status_code == 200 and len(ok.json()["data"]) == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/responses/"),
        ("GET", "/v1/responses/"),
        ("GET", "/v1/models/"),
        ("POST", "/v1/chat/completions/"),
    ],
)
def test_a_stray_slash_is_a_404_not_a_redirect(
    picolm_server: PicoLMServer, method: str, path: str
) -> None:
    response = httpx.request(
        method,
        picolm_server.base_url + path,
        headers={**AUTH, "Host": "attacker.example"},
        follow_redirects=False,
    )
    assert "location" not in response.headers
    assert response.status_code in (404, 405), response.text
    assert_error(response, response.status_code, type_="invalid_request_error")
