"""Helpers for teacher tests: a small real-RAVDESS tree and a build through the pipeline functions."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pallm import pipeline
from pallm.config import BuildConfig
from pallm.dataset import read_manifest


def small_tree(ravdess16k: Path, root: Path, actors: tuple[int, ...] = (1, 2), per_actor: int = 4) -> list[str]:
    """Copy `per_actor` real clips of each actor, spread over the emotions and alternating between the two
    statements; return their ids."""
    ids = []
    for a in actors:
        folder = root / f"Actor_{a:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        clips = sorted((ravdess16k / f"Actor_{a:02d}").glob("*.wav"))
        step = max(1, len(clips) // per_actor)
        # Sorted RAVDESS names run statement 1, 1, 2, 2 within each emotion and intensity: +2 switches.
        for src in [clips[min(len(clips) - 1, k * step + 2 * (k % 2))] for k in range(per_actor)]:
            shutil.copy(src, folder / src.name)
            ids.append(f"ravdess/{src.stem}")
    return sorted(ids)


def build(root: Path, out: Path, teacher: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Plan, run and finalise a build of `root` (no ASR) with this teacher config; returns finalize's summary."""
    cfg = BuildConfig.load(
        None, corpora=[{"name": "ravdess", "path": str(root)}], out=out, asr="none", teacher=teacher, workers=1,
        **overrides,
    )  # fmt: skip
    plan = pipeline.plan(cfg)
    pipeline.prepare_output(out)
    results = pipeline.run_chunks(plan, out)
    return pipeline.finalize(plan, results, out)


def rows(out: Path) -> list[dict[str, Any]]:
    """Every row of the built dataset, without audio."""
    manifest = read_manifest(out)
    found = []
    for s in manifest["shards"]:
        names = [n for n in pq.read_schema(out / s["path"]).names if n != "audio"]
        found += pq.read_table(out / s["path"], columns=names).to_pylist()
    return sorted(found, key=lambda r: r["id"])


def quarantined(out: Path) -> list[dict[str, Any]]:
    return pq.read_table(out / "quarantine.parquet").to_pylist()
