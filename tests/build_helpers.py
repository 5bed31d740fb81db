"""Helpers for build tests: a small RAVDESS-named tree holding real clips and every kind of bad file."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from pallm import pipeline
from pallm.config import BuildConfig
from pallm.dataset import read_manifest

# Valid RAVDESS names for files whose *audio* is bad: the adapter accepts them, the audio stage must not.
BAD_AUDIO = {
    "03-01-02-01-01-01-09": ("empty", "empty file (0 bytes)"),
    "03-01-02-01-01-02-09": ("truncated_header", "not a readable audio file"),
    "03-01-02-01-02-01-09": ("text", "not a readable audio file"),
    "03-01-02-01-02-02-09": ("silence", "silent"),
    "03-01-03-01-01-01-09": ("short", "too short"),
    "03-01-03-01-01-02-09": ("long", "too long"),
}
# Files that must be converted, not quarantined: (subtype, rate, channels).
CONVERTED = {
    "03-01-04-01-01-01-10": ("PCM_24", 48_000, 2),
    "03-01-04-01-01-02-10": ("FLOAT", 44_100, 1),
    "03-01-04-01-02-01-10": ("PCM_16", 8_000, 1),
}
BAD_NAMES = {"03-01-09-01-01-01-10": "emotion code 09 out of range"}


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.2 * np.sin(2 * np.pi * 200 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return np.stack([x * (1 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def make_tree(
    ravdess16k: Path, root: Path, real_per_actor: int = 3, actors: tuple[int, ...] = (1, 2, 5, 6, 9, 10)
) -> dict[str, Any]:
    """Copy a few real clips per actor, add bad and convertible files; return what a build must produce."""
    good: set[str] = set()
    for a in actors:
        folder = root / f"Actor_{a:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        # Real clips whose names the bad and converted files below take are left out.
        reserved = {*BAD_AUDIO, *CONVERTED, *BAD_NAMES}
        real = [p for p in sorted((ravdess16k / f"Actor_{a:02d}").glob("*.wav")) if p.stem not in reserved]
        for src in real[:real_per_actor]:
            shutil.copy(src, folder / src.name)
            good.add(f"ravdess/{src.stem}")
    odd = root / "Actor 10 – répliques été"  # spaces and non-ASCII in the path
    odd.mkdir(parents=True, exist_ok=True)
    for stem, (subtype, rate, ch) in CONVERTED.items():
        sf.write(odd / f"{stem}.wav", tone(1.2, rate, ch), rate, subtype=subtype)
        good.add(f"ravdess/{stem}")
    bad_dir = root / "Actor_09"
    bad_dir.mkdir(parents=True, exist_ok=True)
    for stem, (kind, _) in BAD_AUDIO.items():
        path = bad_dir / f"{stem}.wav"
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "truncated_header":
            buf = io.BytesIO()
            sf.write(buf, tone(0.5, 16_000)[:, 0], 16_000, format="WAV")
            path.write_bytes(buf.getvalue()[:30])
        elif kind == "text":
            path.write_text("not audio\n" * 50)
        elif kind == "silence":
            sf.write(path, np.zeros(32_000, dtype=np.float32), 16_000)
        elif kind == "short":
            sf.write(path, tone(0.05, 16_000)[:, 0], 16_000)
        elif kind == "long":
            sf.write(path, np.full(8_000 * 1200, 0.01, dtype=np.float32), 8_000, subtype="PCM_U8")
    for stem in BAD_NAMES:
        shutil.copy(sorted((ravdess16k / "Actor_01").glob("*.wav"))[0], bad_dir / f"{stem}.wav")
    return {"good": good, "bad_audio": {f"ravdess/{s}": r for s, (_, r) in BAD_AUDIO.items()}, "bad_names": BAD_NAMES}


def build(cfg: BuildConfig) -> tuple[pipeline.Plan, list[pipeline.ChunkResult]]:
    """Plan, run every chunk and finalise, as the flow does, without Prefect."""
    plan = pipeline.plan(cfg)
    pipeline.prepare_output(cfg.out)
    results = pipeline.run_chunks(plan, cfg.out)
    pipeline.finalize(plan, results, cfg.out)
    return plan, results


def shard_rows(out: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of every shard the manifest lists."""
    manifest = read_manifest(out)
    rows: list[dict[str, Any]] = []
    for s in manifest["shards"]:
        rows.extend(pq.read_table(out / s["path"], columns=columns).to_pylist())
    return rows
