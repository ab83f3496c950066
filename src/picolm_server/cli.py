"""The ``picolm-server`` command: flags, configuration loading and starting uvicorn.

Flags take one dash or two (``-config`` as the original Go server took it, or
``--config``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .api.responses.store import ResponseStore
from .config.settings import ConfigError, Settings, load_settings
from .observability.metrics import ShelfMetrics
from .server.app import create_app
from .server.bootstrap import build_core
from .server.footprint import map_large_allocations, release_startup_memory
from .server.logging_setup import configure_logging
from .server.runner import serve

logger = logging.getLogger("picolm_server")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picolm-server",
        description="OpenAI-compatible HTTP API for local LLM inference (PicoLM or llama.cpp).",
        epilog="picolm-server pull URL [--models-dir DIR] [--name ID] [--sha256 HEX] "
        "downloads a GGUF model (picolm-server pull --help).",
    )

    def flag(name: str, **kwargs: Any) -> None:
        parser.add_argument(f"-{name}", f"--{name}", **kwargs)

    flag("config", metavar="FILE", help="YAML configuration file (env: PICOLM_CONFIG)")
    flag("host", help="address to listen on (server.host)")
    flag("port", type=int, help="port to listen on (server.port)")
    flag("api-key", dest="api_key", help="require this Bearer key (server.api_key)")
    flag("engine", choices=["auto", "picolm", "llama_cpp"], help="engine to use (engine)")
    flag("binary", help="PicoLM executable (picolm.binary)")
    flag(
        "model-path",
        dest="model_path",
        help="GGUF model for the engine in use (picolm.model_path or llama_cpp.model_path)",
    )
    flag(
        "embedding-model-path",
        dest="embedding_model_path",
        help="GGUF model for /v1/embeddings (llama_cpp.embedding_model_path)",
    )
    flag(
        "models-dir",
        dest="models_dir",
        metavar="DIR",
        help="every .gguf in DIR is a model, its id the file name (models_dir)",
    )
    flag(
        "keep-alive",
        dest="keep_alive",
        metavar="DURATION",
        help="unload a model idle this long: seconds, 5m, 1h; negative: never (shelf.keep_alive)",
    )
    flag(
        "max-loaded-memory",
        dest="max_loaded_memory",
        metavar="SIZE",
        help="memory loaded models may take: bytes, 6GiB, or auto (shelf.max_loaded_memory)",
    )
    flag("log-level", dest="log_level", help="debug, info, warning or error (logging.level)")
    flag("version", action="version", version=f"picolm-server {__version__}")
    return parser


def _overrides(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    overrides: dict[str, Any] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            overrides.setdefault(section, {})[key] = value

    put("server", "host", args.host)
    put("server", "port", args.port)
    put("server", "api_key", args.api_key)
    put("picolm", "binary", args.binary)
    put("logging", "level", args.log_level)
    put("llama_cpp", "embedding_model_path", args.embedding_model_path)
    put("shelf", "keep_alive", args.keep_alive)
    put("shelf", "max_loaded_memory", args.max_loaded_memory)
    if args.models_dir is not None:
        overrides["models_dir"] = args.models_dir
    if args.engine is not None:
        overrides["engine"] = args.engine
    if args.model_path is not None:
        # The model flag is for the engine that will run: PicoLM when its binary is
        # known, otherwise llama.cpp.
        uses_picolm = (
            args.engine == "picolm"
            or (args.engine in (None, "auto") and (args.binary or settings.picolm.binary))
            or (args.engine is None and settings.engine == "picolm")
        )
        put("picolm" if uses_picolm else "llama_cpp", "model_path", args.model_path)
    return overrides


def load_from_args(argv: list[str] | None = None) -> Settings:
    args = _parser().parse_args(argv)
    config = args.config or os.environ.get("PICOLM_CONFIG")
    path = Path(config) if config else None
    # Two passes: which section --model-path belongs to depends on the rest.
    first = load_settings(path, _overrides(args, Settings()))
    return load_settings(path, _overrides(args, first))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["pull"]:
        from .models.pull import main as pull  # the download code loads only for pulls

        return pull(args[1:])
    try:
        settings = load_from_args(args)
        configure_logging(settings.logging)
        # Made before the shelf, which counts its first loads (at start) in it.
        shelf_metrics = ShelfMetrics()
        core = build_core(settings, shelf_metrics)
    except ConfigError as exc:
        print(f"picolm-server: {exc}", file=sys.stderr)
        return 2
    response_store = ResponseStore(
        Path(settings.responses.store_path) if settings.responses.store_path else None,
        settings.responses.store_max_bytes,
    )
    response_store.check()
    app = create_app(
        core,
        api_key=settings.server.api_key,
        max_body=settings.server.max_body,
        log_requests=settings.logging.log_requests,
        body_timeout=settings.server.body_timeout,
        engine_name=settings.resolved_engine(),
        cors_origins=settings.server.cors_origins,
        metrics_public=settings.server.metrics_public,
        ui=settings.server.ui,
        sse_ping_seconds=settings.server.sse_ping_seconds,
        response_store=response_store,
        shelf_metrics=shelf_metrics,
        server_settings=settings.server,
    )
    release_startup_memory()
    map_large_allocations()
    logger.info("listening on http://%s:%d", settings.server.host, settings.server.port)
    serve(app, settings.server, core.drain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
