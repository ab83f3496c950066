"""Handing back the memory that start-up used and no longer needs.

Reading the model's metadata and vocabulary, building the pydantic models and compiling
the chat template leave freed memory behind inside the process: glibc's ``free`` keeps
freed heap memory for later unless asked to give it back. Once the service is built,
``malloc_trim(0)`` returns it to the system (about 2 MiB of resident memory on a PicoLM
server; docs/benchmarks.md). A full garbage collection before it found a few dozen
objects, freed nothing measurable and cost 25 ms of CPU before the server was ready, so
cycles are left to the collector's own schedule.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger("picolm_server")


def release_startup_memory() -> None:
    """Return free heap memory to the system where libc can."""
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
