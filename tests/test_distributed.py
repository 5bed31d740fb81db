"""Distributed builds: the build-dataset flow on a local Dask or Ray cluster of worker processes writes exactly
what the serial build writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from build_helpers import make_tree

from pallm import pipeline

# What may differ between two builds of the same data: when, by which run, where it was written and ran.
RUNTIME_KEYS = "out|cards_index|workers|runner|cluster|asr_gpus|threads"
RUNTIME_LINES = re.compile(rf"Built by the PALLM pipeline .* on .*|\| run id \|.*|.*\"({RUNTIME_KEYS})\": .*")


def build(runner: str, root: Path, out: Path, config: Path) -> dict:
    from flows.build_dataset import build_dataset

    summary = build_dataset(corpora=[f"ravdess={root}"], out=str(out), name="dist", workers=2, runner=runner,
                            config=str(config), asr="tiny.en", teacher="rules")  # fmt: skip
    assert summary["chunks_cached"] == 0
    return summary


def outcome(out: Path) -> dict:
    """What a build produced: ids, shards by content hash, quarantine, and the card without its run details."""
    manifest = pipeline.read_manifest(out)
    card = (out / "README.md").read_text(encoding="utf-8")
    return {
        "version": manifest["version"],
        "rows": manifest["rows"],
        "ids": sorted(
            i for s in manifest["shards"] for i in pq.read_table(out / s["path"], columns=["id"])["id"].to_pylist()
        ),
        "shards": sorted((s["path"], s["rows"], s["sha256"]) for s in manifest["shards"]),
        "quarantined": pq.read_table(out / "quarantine.parquet").to_pylist(),
        "card": RUNTIME_LINES.sub("", card),
    }


@pytest.mark.slow
def test_dask_and_ray_builds_equal_the_serial_build(
    prefect_env: dict[str, str], ravdess16k: Path, tmp_path: Path
) -> None:
    pytest.importorskip("prefect_dask", reason="needs the dask extra: pip install -e '.[dask]'")
    pytest.importorskip("prefect_ray", reason="needs the ray extra: pip install -e '.[ray]'")
    root = tmp_path / "ravdess"
    expect = make_tree(ravdess16k, root, real_per_actor=2, actors=(1, 2, 5))
    config = tmp_path / "build.yaml"
    config.write_text(json.dumps({"shards": {"chunk_rows": 4}}))  # several chunks, so several workers take part

    results = {r: build(r, root, tmp_path / r, config) for r in ("serial", "dask", "ray")}
    serial = outcome(tmp_path / "serial")
    assert serial["rows"] == len(expect["good"]) and len(serial["shards"]) > 2
    assert results["serial"]["quarantined"] > 0  # bad files travel through the distributed path too
    for runner in ("dask", "ray"):
        got = outcome(tmp_path / runner)
        for key in serial:
            assert got[key] == serial[key], f"{runner} build differs from the serial one in {key}"
