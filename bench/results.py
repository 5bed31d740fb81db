"""The one row format every benchmark can emit, so bench/run_all.py can print them as one table.

A benchmark given `--rows FILE` appends one JSON object per measurement to FILE, besides printing its own
detailed table. `ratio` is always ours / reference of the quantity shown: for a rate (clips/s, tokens/s)
higher is better, for a latency (ms) lower is better; the reference is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    """One measurement against its reference."""

    bench: str
    stage: str
    workload: str
    ours: float
    reference: float
    unit: str  # of ours and reference, e.g. "clips/s" or "ms"
    reference_name: str  # what the reference is, e.g. "whisperx CLI"
    peak_mib: float  # ours'; nan where not measured apart

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference else float("nan")


def add_rows_option(parser: argparse.ArgumentParser) -> None:
    """The `--rows FILE` option every benchmark takes; `write_rows(args.rows, ...)` honours it."""
    parser.add_argument("--rows", type=Path, help="also append the results to this file as JSON lines (run_all.py)")


def write_rows(path: Path | None, rows: list[Row]) -> None:
    """Append rows to `path` as JSON lines; nothing without a path."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for r in rows:
            f.write(json.dumps(asdict(r)) + "\n")


def read_rows(path: Path) -> list[Row]:
    """The rows in a JSON-lines file, in order."""
    return [Row(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def markdown(rows: list[Row]) -> str:
    """One table: stage, workload, ours, reference, ratio, peak memory."""

    def num(x: float) -> str:
        return "n/a" if x != x else f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"

    out = ["| bench | stage | workload | ours | reference | ratio | peak memory |",
           "| --- | --- | --- | ---: | --- | ---: | ---: |"]  # fmt: skip
    for r in rows:
        peak = "n/a" if r.peak_mib != r.peak_mib else f"{r.peak_mib:,.0f} MiB"
        out.append(f"| {r.bench} | {r.stage} | {r.workload} | {num(r.ours)} {r.unit} | {r.reference_name}: "
                   f"{num(r.reference)} {r.unit} | {r.ratio:.2f} | {peak} |")  # fmt: skip
    return "\n".join(out)
