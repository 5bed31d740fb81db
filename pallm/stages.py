"""Stages: plain functions over rows that declare the columns they read and write.

A pipeline is a list of stages; `check_pipeline` proves before anything runs that every column a
stage reads is produced by the corpus adapters or an earlier stage. A stage's `fingerprint` (name,
version, config) is part of every chunk's cache key, so changing a stage re-runs exactly the
chunks it touches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from pallm.corpora.base import SOURCE_KEY, ItemError, Quarantined
from pallm.schema import COLUMN_NAMES, PLANNED_COLUMNS

Row = dict[str, Any]
#: A stage's work: rows in, one result per row out (the new column values, or the error that quarantines it).
Process = Callable[[list[Row]], list[Row | ItemError]]


@dataclass(frozen=True)
class Stage:
    """A named, versioned transformation of rows into the new column values each row gets.

    `process(rows)` returns, for each row in order, a dict with exactly the `writes` columns or an
    `ItemError` that quarantines that row. Stages never mutate their input. A stage that gains from
    seeing many rows at once (batched ASR) asks for up to `batch_size` of them.
    """

    name: str
    version: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    process: Process
    config: BaseModel | None = field(default=None)
    #: config fields that change how the stage runs, not what it writes: not part of the fingerprint
    runtime: frozenset[str] = frozenset()
    #: facts about the machine that change the output (library versions, tools present)
    environment: dict[str, str] = field(default_factory=dict)
    batch_size: int = 1
    #: the stage may cut a row into several (diarization): its result for a row is then a list of rows
    expands: bool = False

    def fingerprint(self) -> str:
        cfg = self.config.model_dump(mode="json", exclude=self.runtime) if self.config is not None else None
        blob = json.dumps(
            {"name": self.name, "version": self.version, "config": cfg, "environment": self.environment},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: Columns a row has before any stage runs: the adapters', the source hash, and what the writer stamps.
INPUT_COLUMNS = (*PLANNED_COLUMNS, SOURCE_KEY, "schema_version")


def check_pipeline(stages: Sequence[Stage], available: Sequence[str] = INPUT_COLUMNS) -> None:
    """Raise ValueError if a stage reads a column nobody wrote, or writes an unknown column."""
    have = set(available)
    for s in stages:
        missing = [c for c in s.reads if c not in have]
        if missing:
            raise ValueError(f"stage {s.name!r} reads {missing} but no earlier stage writes them")
        unknown = [c for c in s.writes if c not in COLUMN_NAMES]
        if unknown:
            raise ValueError(f"stage {s.name!r} writes {unknown}, which pallm.schema does not define")
        have.update(s.writes)


def per_row(fn: Callable[[Row], Row]) -> Process:
    """A stage process from a function of one row that raises `ItemError` to quarantine it."""

    def process(rows: list[Row]) -> list[Row | ItemError]:
        out: list[Row | ItemError] = []
        for row in rows:
            try:
                out.append(fn(row))
            except ItemError as e:
                out.append(e)
        return out

    return process


def run_stages(rows: Sequence[Row], stages: Sequence[Stage]) -> tuple[list[Row], list[Quarantined]]:
    """Run the rows through every stage; a row that fails a stage is quarantined, the rest go on."""
    alive = [dict(r) for r in rows]
    bad: list[Quarantined] = []
    for s in stages:
        if not alive:
            break
        results = s.process(alive)
        if len(results) != len(alive):
            raise ValueError(f"stage {s.name!r} returned {len(results)} results for {len(alive)} rows")
        survivors = []
        for row, out in zip(alive, results, strict=True):
            if isinstance(out, ItemError):
                bad.append(Quarantined(row["id"], row["corpus"], row["audio_path"], s.name, str(out)))
                continue
            for part in out if s.expands else [out]:
                if part.keys() != set(s.writes):
                    raise ValueError(f"stage {s.name!r} wrote {sorted(part)}, but declares {sorted(s.writes)}")
                survivors.append({**row, **part})
        alive = survivors
    return alive, bad
