"""Kill the build with SIGKILL at random points, run it again: complete, identical, no duplicates."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from build_helpers import make_tree
from conftest import ROOT
from reliability import Ledger

from pallm.shards import TMP_PREFIX, sha256_file


def start_build(root: Path, out: Path, config: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pallm.cli", "build-dataset", "--corpus", f"ravdess={root}", "--out", str(out),
         "--config", str(config), "--workers", "2", "--cards-index", str(out.parent / "cards")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def snapshot(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {s["path"]: s["sha256"] for s in manifest["shards"]}


@pytest.mark.reliability
def test_sigkill_at_random_points_then_rerun(
    prefect_server: dict[str, str], ravdess16k: Path, tmp_path: Path, fault_rng: random.Random, ledger: Ledger
) -> None:
    root = tmp_path / "corpus"
    expect = make_tree(ravdess16k, root, real_per_actor=12)
    config = tmp_path / "build.yaml"
    config.write_text("name: crash\nasr: none\nteacher: none\nshards:\n  chunk_rows: 6\n  row_group_rows: 2\n")

    reference = tmp_path / "reference"
    t = time.monotonic()
    proc = start_build(root, reference, config, prefect_server)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    duration = time.monotonic() - t

    total = len(list((reference / ".pallm" / "chunks").iterdir()))
    # Each scenario: a fresh folder, one SIGKILL at a point of the build, then a rerun that must finish.
    scenarios = {"random": None, "first chunk": 1, "half the chunks": max(1, total // 2), "all chunks": total}
    mid_build = 0
    bad = len(expect["bad_audio"]) + len(expect["bad_names"])  # quarantined by every build
    for name, wait_for in scenarios.items():
        out = tmp_path / name.replace(" ", "-")
        records = out / ".pallm" / "chunks"
        proc = start_build(root, out, config, prefect_server)
        if wait_for is None:
            time.sleep(fault_rng.uniform(0.3, duration))
        else:
            deadline = time.monotonic() + 2 * duration
            while proc.poll() is None and time.monotonic() < deadline:
                if records.is_dir() and len(list(records.glob("*.json"))) >= wait_for:
                    break
                time.sleep(0.005)
        done = len(list(records.glob("*.json"))) if records.is_dir() else 0
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        mid_build += killed and 0 < done < total
        rerun = start_build(root, out, config, prefect_server)
        assert rerun.wait(timeout=300) == 0, (name, rerun.stderr.read()[-3000:])
        ids, quarantined = check_same(out, reference, expect["good"])
        ledger.record(f"build: SIGKILL at {name}", f"killed after {done}/{total} chunks, rerun" if killed
                      else "the build finished before the kill, rerun", items=len(expect["good"]) + bad,
                      delivered=len(set(ids)), quarantined=quarantined,
                      duplicates=len(ids) - len(set(ids)))  # fmt: skip
    assert mid_build >= 1, "no kill landed while chunks were being written"


def check_same(out: Path, reference: Path, good: set[str]) -> tuple[list[str], int]:
    """The rebuilt ids and the quarantine count, once checked against the uninterrupted build."""
    # Identical to the uninterrupted build, shard for shard.
    assert snapshot(out) == snapshot(reference)
    ids: list[str] = []
    for path, digest in snapshot(out).items():
        assert sha256_file(out / path) == digest
        ids.extend(pq.read_table(out / path, columns=["id"]).column("id").to_pylist())
    assert len(ids) == len(set(ids)) and set(ids) == good
    # Nothing half-written or stale is left behind.
    listed = {Path(p).name for p in snapshot(out)}
    assert {p.name for p in (out / "data").iterdir()} == listed
    assert not [p for p in out.rglob(TMP_PREFIX + "*")]
    quarantined = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert len(quarantined) == len({(q["id"], q["path"]) for q in quarantined}) == 7
    return ids, len(quarantined)
