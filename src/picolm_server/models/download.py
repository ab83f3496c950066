"""Downloading a GGUF model into a models directory: the server's one download path
(``picolm-server pull``, the container image's ``MODEL_URL`` through it, and the
server's ``/api/pull``).

A download is written to a hidden partial file beside its final name (``.NAME.part``,
which a models directory's ``*.gguf`` never matches) and takes its final name only when
it is whole, is a GGUF file and, when a SHA-256 is given, has that checksum: one atomic
rename, so no half file ever stands under the final name. A file downloaded is marked
as pulled (:mod:`.pulled`): the server's ``/api/delete`` removes only such files. A
partial file left by a cut connection or an interrupted command is resumed with an
HTTP ``Range`` request, guarded by ``If-Range`` (the ETag or Last-Modified date seen
first), so that bytes of a file that has changed on the server are never joined to the
new file's. A download may keep a reserve of free disk space (``reserve_bytes``): it
does not start when the file would not leave it, and stops when the disk's free space
falls to it (another writer, or a file without a length), keeping the partial file for
a resume. Every failure is one
:class:`DownloadError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import httpx

from ..gguf import GGUF_MAGIC, GGUFError, read_gguf_metadata
from .pulled import mark_pulled

HF_SCHEME = "hf://"
HF_RESOLVE = "https://huggingface.co/{repo}/resolve/main/{file}"
SUFFIX = ".gguf"
_CHUNK = 1 << 20
_MAGIC = GGUF_MAGIC.to_bytes(4, "little")
# A cut connection is resumed this many times before the command gives up (the partial
# file stays, and running the command again resumes it).
RETRIES = 5
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_TIMEOUT = httpx.Timeout(30.0)


class DownloadError(Exception):
    """A download that failed; the message is one line, fit for a user."""


class DiskSpaceError(DownloadError):
    """The disk has no room for the download beside the free space it must leave."""


def free_disk_space(directory: Path) -> int:
    return shutil.disk_usage(directory).free


class Progress(Protocol):
    def start(self, name: str, total: int | None, done: int) -> None: ...

    def advance(self, count: int) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    def start(self, name: str, total: int | None, done: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    # True when the file was there already and nothing was downloaded.
    present: bool = False
    # Bytes of an earlier partial download that were kept, not downloaded again.
    resumed_from: int = 0


class _Interrupted(Exception):
    """The transfer stopped before the end; what was written is kept for a resume."""


def resolve_url(url: str) -> str:
    """An http(s) URL as it is; ``hf://owner/repo/path/file.gguf`` as Hugging Face's
    download URL for that file on the repository's main branch."""
    if url.startswith(HF_SCHEME):
        parts = url[len(HF_SCHEME) :].strip("/").split("/")
        if len(parts) < 3 or not all(parts):
            raise DownloadError(f"{url!r}: an hf:// address is hf://owner/repo/file.gguf")
        return HF_RESOLVE.format(repo="/".join(parts[:2]), file="/".join(parts[2:]))
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise DownloadError(
            f"{url!r} is not a URL to download from: use http://, https:// or "
            "hf://owner/repo/file.gguf"
        )
    return url


def file_name(url: str, name: str | None = None) -> str:
    """The file name in the models directory: ``name`` (a model id, or a file name) or
    the URL's last path segment, with ``.gguf`` added when it lacks it."""
    chosen = name if name is not None else unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    chosen = chosen.strip()
    if not chosen:
        raise DownloadError(f"cannot tell a file name from {url!r}: give one with --name")
    if "/" in chosen or "\\" in chosen or "\x00" in chosen or chosen.startswith("."):
        raise DownloadError(f"{chosen!r} cannot be a model's file name")
    return chosen if chosen.lower().endswith(SUFFIX) else chosen + SUFFIX


def checksum(value: str | None) -> str | None:
    """A SHA-256 given by a user, checked and in lower case."""
    if value is None or value == "":
        return None
    lowered = value.strip().lower()
    if not _SHA256.fullmatch(lowered):
        raise DownloadError(f"{value!r} is not a SHA-256 checksum (64 hexadecimal digits)")
    return lowered


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def size_text(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def download(
    url: str,
    models_dir: Path,
    *,
    name: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    retries: int = RETRIES,
    retry_wait: Callable[[int], float] = lambda attempt: min(2.0**attempt, 10.0),
    client: httpx.Client | None = None,
    reserve_bytes: int = 0,
    free_space: Callable[[Path], int] = free_disk_space,
) -> Downloaded:
    """Download ``url`` into ``models_dir``; see the module's description. ``client``
    is the HTTP client to use (it must follow redirects); ``free_space`` tells the free
    bytes of a directory's file system."""
    source = resolve_url(url)
    target = file_name(source, name)
    expected = checksum(sha256)
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot make {models_dir}: {exc.strerror or exc}") from None
    final = models_dir / target
    if final.exists() and not force:
        return _already_there(final, expected)
    transfer = _Transfer(
        source,
        models_dir / f".{target}.part",
        target,
        progress or NoProgress(),
        _Disk(reserve_bytes, free_space),
    )
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(httpx.Client(follow_redirects=True, timeout=_TIMEOUT))
        attempt = 0
        while True:
            try:
                transfer.run(client)
                break
            except _Interrupted as exc:
                attempt += 1
                if attempt > retries:
                    kept = transfer.kept()
                    raise DownloadError(
                        f"download interrupted ({exc}); {size_text(kept)} kept in "
                        f"{transfer.partial}: run the same command again to resume"
                    ) from None
                time.sleep(retry_wait(attempt))
    done = transfer.finish(final, expected)
    mark_pulled(done.path, source)
    return done


@dataclass(frozen=True)
class _Disk:
    """The free space a download must leave, and how to measure what there is."""

    reserve: int
    free: Callable[[Path], int]

    # Measured once per this many bytes written (a system call; 1 MiB chunks at most).
    EVERY = 8 * _CHUNK


def _already_there(final: Path, expected: str | None) -> Downloaded:
    if expected is None:
        return Downloaded(final, final.stat().st_size, "", present=True)
    digest = sha256_of(final)
    if digest != expected:
        raise DownloadError(
            f"{final} exists with another checksum ({digest}): use --force to replace it"
        )
    return Downloaded(final, final.stat().st_size, digest, present=True)


class _Transfer:
    """One file's download into its partial file, over as many requests as it takes."""

    def __init__(self, url: str, partial: Path, name: str, progress: Progress, disk: _Disk) -> None:
        self.url = url
        self.disk = disk
        self.partial = partial
        # Where the partial file came from: the URL and the validator for If-Range.
        self.origin = partial.with_name(partial.name + ".origin")
        self.name = name
        self.progress = progress
        self.resumed_from = self._resumable()

    def kept(self) -> int:
        return self.partial.stat().st_size if self.partial.exists() else 0

    def _resumable(self) -> int:
        """Bytes of a partial file from this same URL; any other partial file goes."""
        try:
            origin = json.loads(self.origin.read_text())
        except (OSError, ValueError):
            origin = None
        if not isinstance(origin, dict) or origin.get("url") != self.url:
            self._discard()
            return 0
        return self.kept()

    def _discard(self) -> None:
        for path in (self.partial, self.origin):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def run(self, client: httpx.Client) -> None:
        have = self.kept()
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            validator = self._validator()
            if validator:
                headers["If-Range"] = validator
        try:
            with client.stream("GET", self.url, headers=headers) as response:
                if response.status_code == 416 and have:
                    # The partial file is not a prefix of what is there now: start again.
                    self._discard()
                    raise _Interrupted("the server refused to resume; starting again")
                if response.status_code >= 400:
                    raise DownloadError(
                        f"HTTP {response.status_code} {response.reason_phrase} for {self.url}"
                    )
                self._receive(response, have)
        except httpx.ConnectError as exc:
            raise DownloadError(f"cannot connect to {urlsplit(self.url).netloc}: {exc}") from None
        except httpx.TransportError as exc:
            raise _Interrupted(str(exc) or type(exc).__name__) from None

    def _validator(self) -> str | None:
        with contextlib.suppress(OSError, ValueError):
            origin = json.loads(self.origin.read_text())
            value = origin.get("etag") or origin.get("last_modified")
            return str(value) if value else None
        return None

    def _receive(self, response: httpx.Response, have: int) -> None:
        if response.status_code == 206:
            start, total = _content_range(response)
            if start != have:
                self._discard()
                raise _Interrupted(f"the server sent bytes from {start}, not {have}")
        else:  # the whole file: a server that ignores Range, or a changed file
            have, total = 0, _length(response)
        self._check_space(total - have if total is not None else None)
        self.origin.write_text(
            json.dumps(
                {
                    "url": self.url,
                    "etag": response.headers.get("ETag"),
                    "last_modified": response.headers.get("Last-Modified"),
                }
            )
        )
        self.progress.start(self.name, total, have)
        try:
            with self.partial.open("ab" if have else "wb") as out:
                head = None if have else b""
                unmeasured = _Disk.EVERY  # measured at the first chunk, then every EVERY
                for chunk in response.iter_bytes():
                    unmeasured += len(chunk)
                    if self.disk.reserve and unmeasured >= _Disk.EVERY:
                        unmeasured = 0
                        self._keep_reserve()
                    if head is not None and len(head) < len(_MAGIC):
                        head += chunk
                        if len(head) >= len(_MAGIC) and not head.startswith(_MAGIC):
                            self._discard()
                            raise DownloadError(
                                f"{self.url} is not a GGUF file (it starts with {head[:16]!r})"
                            )
                    out.write(chunk)
                    self.progress.advance(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadError(
                    f"the disk of {self.partial.parent} is full; {size_text(self.kept())} kept "
                    f"in {self.partial}: free some space and run the same command to resume"
                ) from None
            raise DownloadError(f"cannot write {self.partial}: {exc.strerror or exc}") from None
        finally:
            self.progress.finish()
        size = self.kept()
        if total is not None and size != total:
            raise _Interrupted(f"the connection closed after {size} of {total} bytes")

    def _check_space(self, remaining: int | None) -> None:
        if remaining is None:
            return
        free = self.disk.free(self.partial.parent)
        if remaining + self.disk.reserve > free:
            reserve = self.disk.reserve
            kept = f", and {size_text(reserve)} must stay free" if reserve else ""
            raise DiskSpaceError(
                f"not enough disk space in {self.partial.parent}: {size_text(remaining)} to "
                f"download, {size_text(free)} free{kept}"
            )

    def _keep_reserve(self) -> None:
        free = self.disk.free(self.partial.parent)
        if free <= self.disk.reserve:
            raise DiskSpaceError(
                f"the download stopped: the disk of {self.partial.parent} is down to "
                f"{size_text(free)} free, the {size_text(self.disk.reserve)} it must keep; "
                f"{size_text(self.kept())} kept in {self.partial}: free some space and pull "
                "again to resume"
            )

    def finish(self, final: Path, expected: str | None) -> Downloaded:
        """Checks, then the final name; a file that fails a check is deleted."""
        digest = sha256_of(self.partial)
        if expected is not None and digest != expected:
            self._discard()
            raise DownloadError(
                f"checksum mismatch for {self.name}: expected {expected}, got {digest}; "
                "the download was deleted"
            )
        try:
            read_gguf_metadata(self.partial)
        except GGUFError as exc:
            self._discard()
            reason = str(exc).removeprefix(f"{self.partial}: ")
            raise DownloadError(f"{self.url} is not a usable GGUF file: {reason}") from None
        size = self.partial.stat().st_size
        os.replace(self.partial, final)
        self._discard()
        return Downloaded(final, size, digest, resumed_from=self.resumed_from)


def _content_range(response: httpx.Response) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None:
        raise DownloadError(f"{response.url}: a partial answer without a usable Content-Range")
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None
