"""The C library's heap: handing freed memory back to the system.

glibc's ``free`` keeps freed heap memory for later unless asked to give it back
(``malloc_trim``); the server's memory policy built on it is :mod:`.server.footprint`'s.
This module is only the access to glibc, so that an engine that frees a whole model
(:meth:`~.engines.llama_cpp.engine.LlamaCppEngine.close`) can hand its memory back
without reaching into the server package. Everything here is a no-op where the C
library is not glibc (musl, macOS, Windows).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """glibc, with ``malloc_trim`` and ``mallopt`` typed; None where it is not the C
    library."""
    if not sys.platform.startswith("linux"):
        return None
    # The symbols the process already has (libc's among them): no library search,
    # which ctypes.util would do by running ldconfig and would cost 3 MiB itself.
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None  # not glibc (musl has no malloc_trim)
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def trim_function() -> Callable[[], None] | None:
    """``malloc_trim(0)``, or None where the C library has none."""
    libc = glibc()
    if libc is None:
        return None
    return functools.partial(libc.malloc_trim, 0)


def trim() -> None:
    """Give the heap's free memory back to the system now (a few ms), where libc can."""
    trim_now = trim_function()
    if trim_now is not None:
        trim_now()
