"""Which files of the models directory are models: every ``*.gguf`` lying directly in
``models_dir`` (default ``$XDG_DATA_HOME/picolm-server/models``, else
``~/.local/share/picolm-server/models``, where ``picolm-server pull`` puts models), its
id the file name without ``.gguf``.

Only names ending in ``.gguf`` are read. Hidden files are not (a download in progress
is ``.NAME.part``, and a hidden name is not meant to be served), nor subdirectories or
what is in them. Symbolic links are followed, wherever they point: a link placed in the
directory is a model just as a file is, so whoever can write the directory chooses
what the server reads and serves.
"""

from __future__ import annotations

from pathlib import Path

from ..config.settings import ConfigError, Settings
from ..models import default_models_dir

GGUF_SUFFIX = ".gguf"


def models_dir_of(settings: Settings) -> Path:
    """``models_dir``, or the default directory where ``pull`` puts models."""
    if settings.models_dir:
        return Path(settings.models_dir).expanduser()
    return default_models_dir()


def model_id_of(file: Path) -> str:
    """A directory model's id: its file name without ``.gguf``."""
    return file.name[: -len(GGUF_SUFFIX)]


def directory_models(settings: Settings) -> tuple[Path, list[Path]]:
    """The directory and its model files (by name; each may be a link, and may be
    broken). A configured directory must exist; the default one need not (the first
    ``pull`` makes it)."""
    directory = models_dir_of(settings)
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        if settings.models_dir:
            raise ConfigError(f"models_dir: {settings.models_dir}: no such directory") from None
        return directory, []
    except NotADirectoryError:
        raise ConfigError(f"models_dir: {directory}: not a directory") from None
    except OSError as exc:
        raise ConfigError(f"models_dir: {directory}: cannot be read ({exc.strerror})") from None
    files = [
        entry
        for entry in entries
        if entry.name.endswith(GGUF_SUFFIX)
        and len(entry.name) > len(GGUF_SUFFIX)
        and not entry.name.startswith(".")
    ]
    return directory, files
