"""Where fedsim keeps what it builds or fetches once per user: one rule for every cache."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache(name: str, override: str) -> Path:
    """$`override` when set, else $XDG_CACHE_HOME/fedsim/`name` (~/.cache/fedsim/`name`)."""
    if os.environ.get(override):
        return Path(os.environ[override]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "fedsim" / name
