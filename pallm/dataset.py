"""The reading side of a dataset folder: its manifest, its shards, and tables of their columns.

The build writes a dataset folder (`pallm.pipeline`); the card, review and training read it through
this module, which imports no other part of PALLM, so none of them needs the build to read a dataset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"


def read_manifest(out: Path) -> dict[str, Any]:
    """The manifest of the dataset in `out`."""
    return json.loads((out / MANIFEST).read_text())


def shards(manifest: dict[str, Any], splits: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The manifest's shard entries, of the given splits only when `splits` is given."""
    return [s for s in manifest["shards"] if splits is None or s["split"] in splits]


def read_columns(out: Path, paths: Sequence[str], columns: Sequence[str]) -> pa.Table:
    """The given columns of the shards at `paths` (relative to `out`), concatenated; audio bytes are read only
    when asked for, so statistics over a large dataset stay cheap."""
    tables = [pq.read_table(out / p, columns=list(columns)) for p in paths]
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})
