"""Stored responses: a SQLite file that survives restarts, bounded in size.

Each stored response keeps the response object (what ``GET /v1/responses/{id}``
returns) and the conversation items it was generated from (what a later
``previous_response_id`` continues, and what ``input_items`` lists). ``max_bytes``
bounds the file on disk: the oldest responses are dropped (never the one just saved)
until the pages in use fit it, and the database vacuums itself at every commit
(``auto_vacuum = FULL``), so dropped pages leave the file rather than lingering in it.

Whether the store works is shown on ``/health`` and in a metric (:attr:`ResponseStore.
status`): a file that is not a database, a directory refused for its permissions, a
full disk. It is checked at start without opening the database (:meth:`check`), then by
every use.

The file holds conversations, so it is kept like the prompt states: its directory is
made 0700 (and refused if another user owns it or others may write to it, see
:mod:`picolm_server.engines.state_dir`), the file itself 0600. It is opened on first use,
not at startup, and ``sqlite3`` (1.3 MiB of memory) is imported then. Every call runs in
a worker thread, never on the event loop; one lock serialises them over one connection.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio.to_thread

from ...engines.state_dir import (
    FILE_MODE,
    NOFOLLOW,
    StateDirRefused,
    make_private,
    make_private_dir,
)
from ...errors import APIError

if TYPE_CHECKING:
    import sqlite3

logger = logging.getLogger("picolm_server.responses")

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    response TEXT NOT NULL,
    context TEXT NOT NULL,
    size INTEGER NOT NULL
)
"""


def default_store_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_DATA_HOME/picolm-server/responses.sqlite3``, ``~/.local/share`` when that
    is unset or not absolute (as the XDG base directory rules say)."""
    data_home = environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share"
    return base / "picolm-server" / "responses.sqlite3"


class StoreUnavailableError(APIError):
    """500: the response store cannot be read or written."""

    status_code = 500
    error_type = "server_error"
    default_code = "store_unavailable"


# PRAGMA auto_vacuum's value for FULL: freed pages leave the file at every commit.
_FULL_VACUUM = 1


def _bytes_in_use(connection: sqlite3.Connection) -> int:
    """The bytes the file keeps once this transaction commits (auto-vacuum truncates the
    free pages)."""
    (pages,) = connection.execute("PRAGMA page_count").fetchone()
    (free,) = connection.execute("PRAGMA freelist_count").fetchone()
    (size,) = connection.execute("PRAGMA page_size").fetchone()
    return int((pages - free) * size)


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    context: list[dict[str, Any]]


DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# The first bytes of every SQLite database file.
_SQLITE_MAGIC = b"SQLite format 3\x00"
# "ok": the last use worked (or the start check found nothing wrong); "unavailable": the
# last use (or the start check) failed.
StoreStatus = Literal["ok", "unavailable"]


class ResponseStore:
    """The store at ``path`` (None: :func:`default_store_path`)."""

    def __init__(self, path: Path | None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path if path is not None else default_store_path()
        self.max_bytes = max_bytes
        self.status: StoreStatus = "ok"
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    def check(self) -> None:
        """At start, without sqlite3: an existing file that is not a database makes the
        store unavailable, with one warning in the log (it would fail every save)."""
        try:
            with self.path.open("rb") as file:
                head = file.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return  # made on first use
        except OSError as exc:
            self._unavailable(f"cannot be read ({exc.strerror})")
            return
        if head and head != _SQLITE_MAGIC:
            self._unavailable("is not an SQLite database")

    def _unavailable(self, why: str) -> None:
        self.status = "unavailable"
        logger.warning(
            "response store %s %s: responses created with store=true will not be saved",
            self.path,
            why,
        )

    # ---- in a worker thread, under the lock ------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        import sqlite3  # with the first use of the store (module doc)

        if self._connection is not None:
            return self._connection
        make_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | NOFOLLOW, FILE_MODE)
        try:
            make_private(fd, self.path)
        finally:
            os.close(fd)
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            (vacuum,) = connection.execute("PRAGMA auto_vacuum").fetchone()
            if vacuum != _FULL_VACUUM:
                # Set before the first table is made; a file from before it is rebuilt once.
                connection.execute(f"PRAGMA auto_vacuum = {_FULL_VACUUM}")
                connection.execute("VACUUM")
            connection.execute(_SCHEMA)
        except sqlite3.Error:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        import sqlite3  # with the first use of the store (module doc)

        with self._lock:
            try:
                result = work(self._connect())
            except (sqlite3.Error, OSError, StateDirRefused, ValueError) as exc:
                logger.warning("response store %s: %s", self.path, exc)
                self.status = "unavailable"
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None
                raise StoreUnavailableError(
                    "The response store cannot be used right now; see the server log."
                ) from None
            self.status = "ok"
            return result

    def _save(self, connection: sqlite3.Connection, response_id: str, row: tuple[str, str]) -> None:
        response_text, context_text = row
        size = len(response_text.encode("utf-8")) + len(context_text.encode("utf-8"))
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(
                "INSERT OR REPLACE INTO responses (id, response, context, size) "
                "VALUES (?, ?, ?, ?)",
                (response_id, response_text, context_text, size),
            )
            self._trim(connection)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def _trim(self, connection: sqlite3.Connection) -> None:
        """Drop the oldest responses (never the newest) until the pages in use fit
        ``max_bytes``: first as many as their content says, then one at a time for what
        the file adds to it (page headers, the index, part-filled pages)."""
        (total,) = connection.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()
        newest = connection.execute("SELECT MAX(seq) FROM responses").fetchone()[0]
        if total > self.max_bytes:
            cutoff = None
            rows = connection.execute(
                "SELECT seq, size FROM responses WHERE seq < ? ORDER BY seq", (newest,)
            )
            for seq, size in rows:
                total -= size
                cutoff = seq
                if total <= self.max_bytes:
                    break
            if cutoff is not None:
                connection.execute("DELETE FROM responses WHERE seq <= ?", (cutoff,))
        while _bytes_in_use(connection) > self.max_bytes:
            oldest = connection.execute(
                "SELECT MIN(seq) FROM responses WHERE seq < ?", (newest,)
            ).fetchone()[0]
            if oldest is None:
                return  # only the newest is left: it is kept whatever its size
            connection.execute("DELETE FROM responses WHERE seq = ?", (oldest,))

    @staticmethod
    def _get(connection: sqlite3.Connection, response_id: str) -> StoredResponse | None:
        row = connection.execute(
            "SELECT response, context FROM responses WHERE id = ?", (response_id,)
        ).fetchone()
        if row is None:
            return None
        return StoredResponse(json.loads(row[0]), json.loads(row[1]))

    @staticmethod
    def _delete(connection: sqlite3.Connection, response_id: str) -> bool:
        cursor = connection.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cursor.rowcount > 0

    # ---- for the event loop ----------------------------------------------------------

    async def save(self, response: dict[str, Any], context: list[dict[str, Any]]) -> None:
        row = (json.dumps(response, ensure_ascii=False), json.dumps(context, ensure_ascii=False))
        response_id = str(response["id"])
        await anyio.to_thread.run_sync(
            lambda: self._run(lambda connection: self._save(connection, response_id, row))
        )

    async def get(self, response_id: str) -> StoredResponse | None:
        return await anyio.to_thread.run_sync(
            lambda: self._run(lambda connection: self._get(connection, response_id))
        )

    async def delete(self, response_id: str) -> bool:
        return await anyio.to_thread.run_sync(
            lambda: self._run(lambda connection: self._delete(connection, response_id))
        )

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
