"""Logging as the ``logging:`` section asks: level, text or JSON lines, and where to."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from ..config.settings import LoggingSection

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JSONFormatter(logging.Formatter):
    """One JSON object per line, with any ``extra=`` fields as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            (key, value) for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(settings: LoggingSection) -> None:
    handler: logging.Handler
    if settings.output in ("stdout", "stderr"):
        stream: TextIO = sys.stdout if settings.output == "stdout" else sys.stderr
        handler = logging.StreamHandler(stream)
    else:
        handler = logging.FileHandler(settings.output, encoding="utf-8")
    if settings.format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    # uvicorn's own loggers go through ours; its access log is replaced by the server's.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("picolm_server.access").disabled = not settings.log_requests
