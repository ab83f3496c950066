"""The response store: what it keeps, across a reopen, within its size, and privately."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import pytest

from picolm_server.api.responses.store import (
    ResponseStore,
    StoreUnavailableError,
    default_store_path,
)


def response(number: int, text: str = "x") -> dict[str, object]:
    return {"id": f"resp_{number}", "object": "response", "output": [{"text": text}]}


def test_save_get_delete_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "data" / "responses.sqlite3"
    store = ResponseStore(path, 1 << 20)
    context = [{"id": "msg_1", "type": "message", "role": "user", "content": []}]
    anyio.run(store.save, response(1, "é"), context)
    found = anyio.run(store.get, "resp_1")
    assert found is not None and found.response == response(1, "é") and found.context == context
    store.close()
    reopened = ResponseStore(path, 1 << 20)
    assert anyio.run(reopened.get, "resp_1") == found
    assert anyio.run(reopened.delete, "resp_1") is True
    assert anyio.run(reopened.delete, "resp_1") is False
    assert anyio.run(reopened.get, "resp_1") is None
    reopened.close()


def test_private_directory_and_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "responses.sqlite3"
    old_umask = os.umask(0o022)
    try:
        store = ResponseStore(path, 1 << 20)
        anyio.run(store.save, response(1), [])
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store.close()


def test_oldest_dropped_past_the_limit_never_the_newest(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.sqlite3", 4096)
    for number in range(10):
        anyio.run(store.save, response(number, "y" * 1000), [])
    kept = [number for number in range(10) if anyio.run(store.get, f"resp_{number}")]
    assert kept and kept == list(range(10 - len(kept), 10))
    assert len(kept) < 10
    anyio.run(store.save, response(99, "z" * 10000), [])  # alone over the limit
    assert anyio.run(store.get, "resp_99") is not None
    assert anyio.run(store.get, "resp_9") is None
    store.close()


def test_an_unusable_place_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    store = ResponseStore(tmp_path / "file" / "r.sqlite3", 4096)
    with pytest.raises(StoreUnavailableError):
        anyio.run(store.get, "resp_1")


def test_default_path_follows_xdg(tmp_path: Path) -> None:
    assert default_store_path({"XDG_DATA_HOME": str(tmp_path)}) == (
        tmp_path / "picolm-server" / "responses.sqlite3"
    )
    relative = default_store_path({"XDG_DATA_HOME": "rel"})
    assert relative == Path.home() / ".local" / "share" / "picolm-server" / "responses.sqlite3"
