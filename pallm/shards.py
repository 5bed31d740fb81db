"""Parquet shards written atomically, and the files that describe them.

Nothing is ever visible under its final name half-written: every file is written to a temporary
name in the same folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pallm.schema import COLUMN_NAMES, arrow_schema

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it is renamed to `final`.

    The rename is atomic, so a reader (or a rerun after the process was killed) sees the old file
    or the complete new one, never a part. There is no fsync: that would guard against power loss
    at a cost of a fifth of build time, and a rerun verifies shards against their records anyway.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + final.name + ".", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; outputs are ordinary files
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    # Read, not set-and-restore: os.umask() would briefly change it for every thread of the process.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard: its path relative to the dataset folder, rows, bytes and checksum."""

    path: str
    rows: int
    bytes: int
    sha256: str


def write_shards(
    rows: Iterable[dict[str, Any]],
    out_dir: Path,
    stem: str,
    *,
    max_bytes: int,
    row_group_rows: int,
    row_group_bytes: int = 64 << 20,
    columns: Sequence[str] = COLUMN_NAMES,
    rel_to: Path | None = None,
) -> list[ShardInfo]:
    """Stream rows into `out_dir/<stem>.parquet`, rolling over to `<stem>-p1.parquet`... past `max_bytes`.

    Rows are buffered into row groups of at most `row_group_rows` rows or `row_group_bytes` of
    audio, so memory stays bounded whatever the clip lengths; a shard exceeds `max_bytes` by at
    most one row group. An empty input writes no file (readers such as `datasets` trip on
    empty shards). Shard paths are recorded relative to `rel_to` (default: the parent of `out_dir`).
    """
    base = rel_to if rel_to is not None else out_dir.parent
    schema = arrow_schema(tuple(columns))
    shards: list[ShardInfo] = []
    it = iter(rows)
    pending = next(it, None)
    part = 0
    while pending is not None:
        name = f"{stem}.parquet" if part == 0 else f"{stem}-p{part}.parquet"
        final = out_dir / name
        n_rows = 0
        with atomic_path(final) as tmp:
            with pq.ParquetWriter(tmp, schema, **parquet_options(schema)) as writer:
                while pending is not None:
                    group: list[dict[str, Any]] = []
                    size = 0
                    while pending is not None and len(group) < row_group_rows and size < row_group_bytes:
                        group.append({c: pending.get(c) for c in columns})
                        size += len((pending.get("audio") or {}).get("bytes") or b"")
                        pending = next(it, None)
                    table = pa.Table.from_pydict({c: [r[c] for r in group] for c in columns}, schema=schema)
                    writer.write_table(table, row_group_size=len(group))
                    n_rows += len(group)
                    if tmp.stat().st_size >= max_bytes:
                        break
        shards.append(ShardInfo(final.relative_to(base).as_posix(), n_rows, final.stat().st_size, sha256_file(final)))
        part += 1
    return shards


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """Writer options: zstd, dictionaries and statistics for every column but the audio bytes.

    Encoded audio barely compresses, has no useful min/max and never repeats; spending CPU on it
    made writing four times slower. The options name leaf column paths (`audio.bytes`), which is
    what Parquet matches them against.
    """
    leaves = [c for c in _leaf_paths(schema) if c != "audio.bytes"]
    return {
        "compression": dict.fromkeys(leaves, "zstd") | {"audio.bytes": "none"},
        "use_dictionary": leaves,
        "write_statistics": leaves,
        "write_page_index": False,
    }


def _leaf_paths(schema: pa.Schema) -> list[str]:
    def walk(prefix: str, t: pa.DataType) -> list[str]:
        if pa.types.is_struct(t):
            return [p for i in range(t.num_fields) for p in walk(f"{prefix}.{t.field(i).name}", t.field(i).type)]
        if pa.types.is_list(t):
            return walk(f"{prefix}.list.element", t.value_type)
        return [prefix]

    return [p for f in schema for p in walk(f.name, f.type)]
