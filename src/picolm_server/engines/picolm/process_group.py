"""PicoLM's process in a group of its own, and the end of that group: every process it
may have left behind goes with it.

POSIX (Linux, macOS, the BSDs): a new session (``start_new_session``), ended with
``os.killpg`` and SIGKILL. Windows has neither: the process starts with
``CREATE_NEW_PROCESS_GROUP`` (so that a Ctrl+C in the server's console is not delivered to
it as well) and is ended with ``kill()``, which is ``terminate()`` there
(``TerminateProcess``); a process it started itself would outlive it, and PicoLM starts
none. The choice is made by what the ``os`` module offers, not by the platform's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from typing import Any


def spawn_options() -> dict[str, Any]:
    """Keyword arguments for ``asyncio.create_subprocess_exec``."""
    if hasattr(os, "killpg"):
        return {"start_new_session": True}
    flag = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", None)
    return {"creationflags": flag} if flag is not None else {}


def kill_group(process: asyncio.subprocess.Process) -> None:
    """End the process and its group at once (nothing happens when it has ended)."""
    with contextlib.suppress(ProcessLookupError):
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
