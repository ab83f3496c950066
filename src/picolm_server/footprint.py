"""Handing back the memory that start-up used and no longer needs.

Reading the model's metadata and vocabulary, building the pydantic models and compiling
the chat template leave freed memory behind inside the process: CPython returns its own
small-object arenas only when they are entirely empty, and glibc's ``free`` keeps freed
heap memory for later unless asked to give it back. Once the service is built, a full
garbage collection and ``malloc_trim(0)`` return it to the system (about 2-4 MiB of
resident memory on a PicoLM server; docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys

logger = logging.getLogger("picolm_server")


def release_startup_memory() -> None:
    """Collect garbage, then return free heap memory to the system where libc can."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        # The symbols the process already has (libc's among them): no library search,
        # which ctypes.util would do by running ldconfig and would cost 3 MiB itself.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        logger.debug("malloc_trim is not available: start-up memory stays with the process")
        return
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
