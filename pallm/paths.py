"""Where pallm keeps what it makes once and reuses: the synthetic corpus, assembled model folders."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(name: str) -> Path:
    """`$PALLM_CACHE/<name>`, else `<XDG cache>/pallm/<name>` (`$XDG_CACHE_HOME`, or `~/.cache` when unset)."""
    if os.environ.get("PALLM_CACHE"):
        return Path(os.environ["PALLM_CACHE"]) / name
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pallm" / name
