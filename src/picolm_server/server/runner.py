"""Running the application under uvicorn with the server's connection limits and the
graceful drain on SIGTERM or SIGINT."""

from __future__ import annotations

import math

import uvicorn
from starlette.types import ASGIApp

from ..config.settings import ServerSection
from ..generation.drain import Drain, DrainingServer
from ..http.limits import guarded_protocol

# uvicorn's own last resort after the drain has ended the running requests: time for
# them to send their error and close.
_DRAIN_GRACE_SECONDS = 5.0


def serve(app: ASGIApp, server: ServerSection, drain: Drain) -> None:
    config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        log_config=None,
        access_log=False,
        http=guarded_protocol(server.header_timeout, server.max_connections),
        timeout_keep_alive=server.keep_alive_timeout,
        h11_max_incomplete_event_size=server.max_header_size,
        timeout_graceful_shutdown=math.ceil(server.shutdown_timeout + _DRAIN_GRACE_SECONDS),
    )
    DrainingServer(config, drain, drain_seconds=server.shutdown_timeout).run()
