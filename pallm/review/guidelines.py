"""The labelers' guidelines: one Markdown file whose heading carries its version; decisions record it."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

FILE = Path(__file__).with_name("guidelines.md")


@cache
def text() -> str:
    return FILE.read_text(encoding="utf-8")


def version() -> str:
    """The version in the guidelines' first heading (`# ... version N`)."""
    m = re.search(r"version (\S+)", text().splitlines()[0])
    if not m:
        raise ValueError(f"{FILE} must start with a heading naming its version")
    return m.group(1)


GUIDELINE_VERSION = version()
