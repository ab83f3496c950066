"""The ``picolm-server pull`` command: download a GGUF model into the models directory.

Exit status 0 when the model is there (downloaded, or present already), 1 with one line
on stderr when it is not, 130 when interrupted (the partial file is kept: the same
command resumes it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import default_models_dir
from .download import DownloadError, download, size_text
from .progress import progress_for

PROG = "picolm-server pull"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Download a GGUF model into the models directory.",
        epilog="hf://owner/repo/file.gguf is the file on the Hugging Face repository's "
        "main branch.",
    )
    parser.add_argument("url", metavar="URL", help="http(s):// URL or hf://owner/repo/file.gguf")

    def flag(name: str, **kwargs: Any) -> None:
        parser.add_argument(f"-{name}", f"--{name}", **kwargs)

    flag(
        "models-dir",
        dest="models_dir",
        metavar="DIR",
        help=f"where models are kept (default {default_models_dir()})",
    )
    flag(
        "name",
        metavar="ID",
        help="the model's id, its file name without .gguf (default: from the URL)",
    )
    flag("sha256", metavar="HEX", help="the file's SHA-256; a mismatch deletes the download")
    flag("force", action="store_true", help="download again when the file is there already")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    models_dir = Path(args.models_dir) if args.models_dir else default_models_dir()
    try:
        result = download(
            args.url,
            models_dir,
            name=args.name,
            sha256=args.sha256,
            force=args.force,
            progress=progress_for(),
        )
    except DownloadError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if result.present:
        print(
            f"{result.path} is there already ({size_text(result.size)}; --force downloads it again)"
        )
    else:
        resumed = f", resumed at {size_text(result.resumed_from)}" if result.resumed_from else ""
        print(f"{result.path}: {size_text(result.size)}{resumed}, sha256 {result.sha256}")
    return 0
