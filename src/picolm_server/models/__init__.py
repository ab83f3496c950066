"""Model files on disk: where they live by default, and how they arrive
(:mod:`.download`, the one download path; :mod:`.pull`, its command)."""

from __future__ import annotations

import os
from pathlib import Path


def default_models_dir() -> Path:
    """``$XDG_DATA_HOME/picolm-server/models``, else ``~/.local/share/picolm-server/models``."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "picolm-server" / "models"
