"""The directory saved prompt states live in: where it is by default, that it is private
and this user's own, and whether it can be used right now.

A saved state holds the token ids of a prompt, so it is kept like the prompt itself: the
directory is created 0700 and every file in it 0600, whatever the umask, and a
configured directory that another user owns, or that group or others may write to, is
refused at startup (:class:`StateDirRefused`).

At run time the directory may become unusable in any way (made read-only, full, deleted,
replaced by a file or a symbolic link). Whoever uses it reports a failure with
:meth:`StateDir.failed`; the directory is then off, with one warning, and requests go on
without reuse. :meth:`StateDir.usable` answers cheaply (two ``lstat`` calls while it is
on; a probe at most every ``recheck_seconds`` while it is off) and turns it back on by
itself once the directory is usable again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

logger = logging.getLogger("picolm_server.prompt_cache")

DIR_MODE = 0o700
FILE_MODE = 0o600
RECHECK_SECONDS = 2.0
# A directory that fails again this soon after it came back is probed less often.
_FLAP_SECONDS = 60.0
_MAX_RECHECK_SECONDS = 60.0
RUN_PREFIX = ".run-"
_PROBE_BYTES = 4096
# POSIX flags Windows lacks (there a file's privacy comes from the user profile's access
# control lists, which mode bits do not describe, and a symbolic link needs privileges).
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class StateDirRefused(Exception):
    """The configured directory is not safe to keep prompts in (one line for the operator)."""


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CACHE_HOME/picolm-server/prompt-states``, ``~/.cache`` when that is unset
    or not absolute (as the XDG base directory rules say)."""
    cache_home = environ.get("XDG_CACHE_HOME", "")
    base = Path(cache_home) if os.path.isabs(cache_home) else Path.home() / ".cache"
    return base / "picolm-server" / "prompt-states"


def unsafe(st: os.stat_result) -> str | None:
    """Why a directory with this ``lstat`` is no place for prompt states, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if not hasattr(os, "geteuid"):  # Windows: no owner ids nor meaningful mode bits
        return None
    if st.st_uid != os.geteuid():
        return f"is owned by another user (uid {st.st_uid}, this server runs as {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def make_private_dir(path: Path) -> os.stat_result:
    """Create ``path`` 0700 (its parents as the umask says) unless it exists; return its
    ``lstat``. Raises StateDirRefused when it is unsafe, OSError when it cannot be made."""
    try:
        path.mkdir(parents=True, mode=DIR_MODE)
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass
    st = os.lstat(path)
    problem = unsafe(st)
    if problem is not None:
        raise StateDirRefused(f"{path} {problem}")
    return st


def create_private_file(path: Path) -> None:
    """Create an empty file only this user can read, whatever the umask (fails if it exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, FILE_MODE)
    try:
        make_private(fd, path)
    finally:
        os.close(fd)


def make_private(fd: int, path: Path) -> None:
    """Mode 0600 for the file open as ``fd`` (``os.open``'s mode is filtered by the umask)."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, FILE_MODE)
    else:  # Windows (before Python 3.13)
        os.chmod(path, FILE_MODE)


def write_private_file(path: Path, *parts: bytes) -> None:
    """Write ``parts``, one after the other, to a new private file (fails if it exists)."""
    create_private_file(path)
    fd = os.open(path, os.O_WRONLY | NOFOLLOW | CLOEXEC)
    try:
        for data in parts:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        # os.kill(pid, 0) there sends Ctrl+C to a process group: taken as alive, another
        # server's files are never removed.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class StateDir:
    """One model's folder of states (``base / name``) and whether it is usable now.

    Thread-safe. ``generation`` changes whenever the folder comes back after a fault:
    its contents must be read again.
    """

    def __init__(
        self,
        base: Path,
        name: str,
        *,
        recheck_seconds: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.path = base / name
        self.generation = 0
        self._recheck = recheck_seconds
        self._interval = recheck_seconds
        self._clock = clock
        self._identity: tuple[tuple[int, int], tuple[int, int]] | None = None
        self._fault: str | None = None
        self._next_probe = 0.0
        self._recovered_at = -_FLAP_SECONDS
        self._lock = threading.Lock()

    def open(self) -> None:
        """At startup: make the base and model folders. Raises StateDirRefused when the
        base is unsafe; any other problem leaves the directory off (one warning), to be
        retried later."""
        try:
            make_private_dir(self.base)
        except OSError as exc:
            self.failed(f"{self.base}: {exc.strerror or exc}")
            return
        with self._lock:
            problem = self._probe()
            if problem is None:
                self.generation += 1
        if problem is not None:
            self.failed(problem)

    @property
    def fault(self) -> str | None:
        """Why the directory is off, or None while it is on."""
        return self._fault

    def failed(self, reason: str) -> None:
        """Turn reuse off: something could not be done in the directory."""
        with self._lock:
            if self._fault is not None:
                return
            now = self._clock()
            flapping = now - self._recovered_at < _FLAP_SECONDS
            self._interval = (
                min(self._interval * 2, _MAX_RECHECK_SECONDS) if flapping else self._recheck
            )
            self._fault = reason
            self._next_probe = now + self._interval
        logger.warning(
            "prompt reuse is off: %s; requests are served without it until the "
            "directory is usable again",
            reason,
        )

    def usable(self) -> bool:
        """Whether states can be read and written now (cheap; see the module docstring)."""
        with self._lock:
            if self._fault is None:
                problem = self._check()
                if problem is None:
                    return True
            elif self._clock() < self._next_probe:
                return False
            else:
                problem = self._probe()
                if problem is None:
                    # What it holds now is read again: a directory made again can even
                    # have the inode number of the one deleted.
                    self.generation += 1
                    self._fault = None
                    self._recovered_at = self._clock()
                    logger.info("prompt reuse is back on: %s is usable again", self.path)
                    return True
                self._next_probe = self._clock() + self._interval
                return False
        self.failed(problem)
        return False

    def _check(self) -> str | None:
        """Is it still the very directory that was checked, still safe? Two lstat calls."""
        stats = []
        for path in (self.base, self.path):
            try:
                st = os.lstat(path)
            except OSError as exc:
                return f"{path}: {exc.strerror or exc}"
            problem = unsafe(st)
            if problem is not None:
                return f"{path} {problem}"
            stats.append(st)
        if (_identity(stats[0]), _identity(stats[1])) != self._identity:
            return f"{self.path} was replaced"
        return None

    def _probe(self) -> str | None:
        """Make the model folder if it is missing and write a file in it; on success
        remember what the directories are. Never creates the base directory."""
        try:
            base = os.lstat(self.base)
            problem = unsafe(base)
            if problem is not None:
                return f"{self.base} {problem}"
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.path, DIR_MODE)
            folder = os.lstat(self.path)
            problem = unsafe(folder)
            if problem is not None:
                return f"{self.path} {problem}"
            if stat.S_IMODE(folder.st_mode) != DIR_MODE:
                os.chmod(self.path, DIR_MODE, follow_symlinks=False)
        except OSError as exc:
            return f"{self.path}: {exc.strerror or exc}"
        problem = self._write_probe()
        if problem is None:
            self._identity = (_identity(base), _identity(folder))
        return problem

    def _write_probe(self) -> str | None:
        probe = self.path / f"{RUN_PREFIX}{os.getpid()}-probe-{uuid.uuid4().hex}"
        try:
            write_private_file(probe, b"\0" * _PROBE_BYTES)
        except OSError as exc:
            return f"{self.path}: {exc.strerror or exc}"
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        return None

    def remove_leftovers(self) -> None:
        """Delete the files in progress (``RUN_PREFIX`` + process id) that processes no
        longer running left behind; another live server's are left alone."""
        for leftover in self.path.glob(f"{RUN_PREFIX}*"):
            match = re.match(rf"{re.escape(RUN_PREFIX)}(\d+)-", leftover.name)
            if match is None or not _pid_alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def recheck(self) -> None:
        """Check now that the directory is still the same and can be written to (after
        something failed to be written in it for a reason not known)."""
        with self._lock:
            if self._fault is not None:
                return
            problem = self._check() or self._write_probe()
        if problem is not None:
            self.failed(problem)
