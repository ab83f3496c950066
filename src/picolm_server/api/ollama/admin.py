"""Ollama's model administration: ``POST /api/pull``, ``DELETE /api/delete``,
``POST /api/copy``, which change the shelf while the server runs.

Who may call them is ``server.model_admin`` (:mod:`.admin_access`; 403 otherwise).

- ``/api/pull``: the model's name is a URL or ``hf://owner/repo/file.gguf`` (there is
  no Ollama registry here), under a ``server.pull_allow`` prefix (:mod:`.pull_source`).
  The file is downloaded into the models directory by the server's one download path
  (:mod:`picolm_server.models.download`: resumable, checked as a GGUF, marked as
  pulled), leaving ``server.pull_reserve`` of the disk free, then put on the shelf as
  its directory model (its id the file name without ``.gguf``, its engine chosen from
  the file). The file's name comes from the URL and is checked as ``picolm-server
  pull --name`` checks it; no model name becomes a path. ``stream`` (default true)
  sends Ollama's progress objects as NDJSON (``pulling manifest``, ``pulling <file>``
  with ``total`` and ``completed``, ``verifying sha256 digest`` with the file's
  ``digest``, ``success``); an error after the stream has started is a line with
  ``error``. ``stream: false`` answers one object, ``{"status": "success"}``, or the
  error with its status. A client that goes away stops the download; the partial file
  is kept, and the same pull resumes it.
- ``/api/copy``: ``destination`` becomes another name (an alias) of ``source``'s model;
  a name already taken is refused (400). Aliases made here last until the server stops.
- ``/api/delete``: an alias is removed alone; a model's id takes the model and its
  aliases off the shelf, unloading it first (409 while requests use it; the default
  model cannot be deleted). Its file is deleted only when the shelf pulled it into its
  models directory (:mod:`picolm_server.models.pulled`); any other file stays, and a
  model of the configuration or of the directory comes back at the next start.

Names are Ollama's: ``x`` and ``x:latest`` are the same model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response

from ...config.settings import ConfigError, ServerSection
from ...errors import (
    APIError,
    InsufficientStorageError,
    InvalidRequestError,
    ModelNotFoundError,
    PullFailedError,
)
from ...http.requests import core_of, parse_request
from ...http.responses import JSONResponse, NDJSONResponse
from ...http.route_table import Routes
from ...models.download import (
    DiskSpaceError,
    Downloaded,
    DownloadError,
    download,
    file_name,
    resolve_url,
)
from ...models.pulled import remove_pulled, was_pulled
from ...shelf.catalog import LATEST_TAG, NameTaken, ShelfModel, valid_name
from ...shelf.models_dir import model_id_of
from ...shelf.shelf import Shelf
from .admin_access import check_admin
from .pull_source import check_source, guarded_client
from .respond import error_line

router = Routes()
logger = logging.getLogger("picolm_server")

# The longest name /api/copy gives (a name is written in log lines and listings).
MAX_NAME_LENGTH = 200
# At most one progress line per this many seconds while bytes arrive.
PROGRESS_SECONDS = 0.1


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    name: str | None = None  # the older field
    insecure: bool = False  # Ollama's registry option; nothing here is insecure
    stream: bool = True


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    name: str | None = None


class CopyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source: str
    destination: str


def _server(request: Request) -> ServerSection:
    server: ServerSection = request.app.state.server_settings
    return server


def _shelf(request: Request) -> Shelf:
    shelf = core_of(request).models
    if not isinstance(shelf, Shelf):  # a core serving from something else: nothing to change
        raise InvalidRequestError("This server's models cannot be changed while it runs.")
    return shelf


async def _admitted(request: Request) -> Shelf:
    """The shelf, once the client may change it (before the body is read)."""
    check_admin(request.scope, _server(request))
    return _shelf(request)


def _required(name: str | None, field: str = "model") -> str:
    if not name:
        raise InvalidRequestError(f"Missing required parameter: '{field}'.", param=field)
    return name


def _shelf_name(shelf: Shelf, name: str) -> str:
    """The name on the shelf that ``name`` means: itself, or without ``:latest``."""
    for candidate in (name, name.removesuffix(LATEST_TAG)):
        model = shelf.catalog.find(candidate)
        if candidate and model is not None and candidate in model.names:
            return candidate
    raise ModelNotFoundError(name)


# ---- copy and delete --------------------------------------------------------------------


@router.post("/api/copy")
async def copy_model(request: Request) -> Response:
    shelf = await _admitted(request)
    body = await parse_request(request, CopyRequest)
    source = _shelf_name(shelf, _required(body.source, "source"))
    destination = _required(body.destination, "destination").removesuffix(LATEST_TAG)
    if not valid_name(destination) or len(destination) > MAX_NAME_LENGTH:
        raise InvalidRequestError(
            f"{body.destination!r} is not a model name (at most {MAX_NAME_LENGTH} "
            "printable characters, no spaces around it).",
            param="destination",
        )
    try:
        shelf.add_alias(source, destination)
    except NameTaken as exc:
        raise InvalidRequestError(str(exc), param="destination") from None
    return Response(status_code=200)


def _is_file(model: ShelfModel, path: Path) -> bool:
    """Whether ``model`` is the file ``path`` (the catalog holds paths resolved)."""
    return model.path == path.resolve()


def _pulled_here(model: ShelfModel, models_dir: Path) -> bool:
    """Whether the model's file is one the shelf pulled into its models directory."""
    return (
        model.source == "models_dir"
        and model.path.parent == models_dir.resolve()
        and was_pulled(model.path)
    )


@router.delete("/api/delete")
async def delete_model(request: Request) -> Response:
    shelf = await _admitted(request)
    body = await parse_request(request, DeleteRequest)
    name = _shelf_name(shelf, _required(body.model or body.name))
    try:
        model = await shelf.remove(name)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="model") from None
    if name == model.id and _pulled_here(model, shelf.catalog.models_dir):
        await asyncio.to_thread(remove_pulled, model.path)
        logger.info("model %r: its pulled file %s deleted", model.id, model.path)
    elif name == model.id:
        logger.info("model %r: its file %s kept (not pulled by this shelf)", model.id, model.path)
    return Response(status_code=200)


# ---- pull -------------------------------------------------------------------------------


class _Cancelled(Exception):
    """The client went away: the download stops (its partial file is kept)."""


class _LineProgress:
    """The download's progress (called from its thread) as Ollama's progress objects,
    put on the event loop's queue: at most one per :data:`PROGRESS_SECONDS`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[dict[str, Any]]):
        self._loop = loop
        self._queue = queue
        self.cancelled = threading.Event()
        self._status = ""
        self._total: int | None = None
        self._completed = 0
        self._sent_at = 0.0

    def _send(self) -> None:
        line: dict[str, Any] = {"status": self._status, "completed": self._completed}
        if self._total is not None:
            line["total"] = self._total
        self._sent_at = self._loop.time()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, line)

    def start(self, name: str, total: int | None, done: int) -> None:
        self._status, self._total, self._completed = f"pulling {name}", total, done
        self._send()

    def advance(self, count: int) -> None:
        if self.cancelled.is_set():
            raise _Cancelled
        self._completed += count
        if self._loop.time() - self._sent_at >= PROGRESS_SECONDS:
            self._send()

    def finish(self) -> None:
        self._send()


def _api_error(exc: Exception) -> APIError:
    """A pull's failure as the error its client gets."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, DiskSpaceError):
        return InsufficientStorageError(str(exc))
    if isinstance(exc, DownloadError):
        return PullFailedError(str(exc))
    if isinstance(exc, NameTaken | ConfigError):
        return InvalidRequestError(str(exc), param="model")
    raise exc


class _Pull:
    """One pull: the download in a worker thread, its progress as lines, then the
    model on the shelf."""

    def __init__(self, request: Request, shelf: Shelf, url: str, target: str) -> None:
        self.shelf = shelf
        self.url = url
        self.target = target
        self.server = _server(request)
        state = request.app.state
        if getattr(state, "pulls", None) is None:
            state.pulls = set()
        # The files being pulled: two pulls of one file would write one partial file.
        self.pulling: set[Path] = state.pulls
        self.path = shelf.catalog.models_dir / target
        self.started = False

    def claim(self) -> None:
        """Refuse (400) a pull of a file that is being pulled."""
        if self.path in self.pulling:
            raise InvalidRequestError(f"{self.target} is being pulled already.", param="model")
        self.pulling.add(self.path)

    def _download(self, progress: _LineProgress) -> Downloaded:
        with guarded_client(self.server.pull_allow) as client:
            return download(
                self.url,
                self.shelf.catalog.models_dir,
                name=self.target,
                progress=progress,
                client=client,
                reserve_bytes=self.server.pull_reserve,
            )

    async def lines(self) -> AsyncGenerator[dict[str, Any]]:
        """The progress objects, ending with ``success``; raises the pull's failure.
        :meth:`claim` first."""
        try:
            yield {"status": "pulling manifest"}
        finally:
            if not self.started:  # released here when no download began
                self.pulling.discard(self.path)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        progress = _LineProgress(loop, queue)
        self.pulling.add(self.path)
        self.started = True
        task = asyncio.ensure_future(asyncio.to_thread(self._download, progress))
        # The name is free again once the download's thread has ended, not before.
        task.add_done_callback(self._ended)
        try:
            while not task.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
        finally:
            progress.cancelled.set()  # a client gone: the thread stops at its next chunk
        done = task.result()
        if done.sha256:
            yield {"status": "verifying sha256 digest", "digest": f"sha256:{done.sha256}"}
        model = await self._shelve(done.path)
        if model.problem is not None:
            raise PullFailedError(f"{model.id} was pulled but cannot be served: {model.problem}")
        yield {"status": "success"}

    def _ended(self, task: asyncio.Future[Downloaded]) -> None:
        self.pulling.discard(self.path)
        if not task.cancelled():
            task.exception()  # retrieved: a client gone is told nothing, and it is no error

    async def _shelve(self, path: Path) -> ShelfModel:
        model = self.shelf.catalog.find(model_id_of(path))
        if model is not None and _is_file(model, path):
            return model  # there already (pulled before)
        return await self.shelf.add_file(path)


async def _stream(pull: _Pull) -> AsyncIterator[bytes]:
    try:
        async for line in pull.lines():
            yield json.dumps(line).encode() + b"\n"
    except Exception as exc:
        yield error_line(_api_error(exc))


@router.post("/api/pull")
async def pull_model(request: Request) -> Response:
    shelf = await _admitted(request)
    body = await parse_request(request, PullRequest)
    name = _required(body.model or body.name)
    try:
        url = resolve_url(name)
    except DownloadError as exc:
        raise InvalidRequestError(str(exc), param="model") from None
    check_source(url, _server(request).pull_allow)
    try:
        target = file_name(url)
    except DownloadError as exc:
        raise InvalidRequestError(str(exc), param="model") from None
    model_id = model_id_of(Path(target))
    taken = shelf.catalog.find(model_id) if model_id else None
    if taken is not None and not _is_file(taken, shelf.catalog.models_dir / target):
        raise InvalidRequestError(
            f"{model_id!r}, the name {name!r} would have, is already the name of the "
            f"model {taken.id!r}.",
            param="model",
        )
    pull = _Pull(request, shelf, url, target)
    pull.claim()
    if body.stream:
        return NDJSONResponse(_stream(pull))
    try:
        async with contextlib.aclosing(pull.lines()) as lines:
            async for _ in lines:
                pass
    except Exception as exc:
        raise _api_error(exc) from None
    return JSONResponse({"status": "success"})
