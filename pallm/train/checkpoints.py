"""Where a stage left off: the trainers' `checkpoint-N` folders and each stage's finished model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pallm.shards import write_json_atomic

DONE = "done.json"


def last_checkpoint(out: Path) -> str | None:
    """The newest complete `checkpoint-N` under `out` (one whose trainer state was written), or None."""
    found = []
    for d in out.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if m and (d / "trainer_state.json").is_file():
            found.append((int(m[1]), d))
    return str(max(found)[1]) if found else None


def finished(stage_dir: Path) -> dict[str, Any] | None:
    """What a finished stage recorded, or None when it has not finished."""
    path = stage_dir / DONE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def mark_finished(stage_dir: Path, record: dict[str, Any]) -> None:
    """Record a stage as finished, atomically: a crash leaves the stage unfinished, never half-marked."""
    write_json_atomic(stage_dir / DONE, record)
