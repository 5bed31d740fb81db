"""SIGKILL the build while the teacher is answering, run it again: no answer is asked for twice."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from openai_double import Double, serve
from reliability import Ledger
from teacher_helpers import rows, small_tree


def start(root: Path, out: Path, config: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pallm.cli", "build-dataset", "--corpus", f"ravdess={root}", "--out", str(out),
         "--config", str(config), "--cards-index", str(out.parent / "cards")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def config_for(path: Path, base_url: str) -> Path:
    teacher = {"backend": "openai", "base_url": base_url, "model": "double", "concurrency": 2, "retries": 1}
    path.write_text(yaml.safe_dump({"name": "killed", "asr": "none", "workers": 2, "teacher": teacher}))
    return path


def answers_in(cache: Path) -> int:
    try:
        with sqlite3.connect(cache, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.reliability
def test_sigkill_mid_teacher_then_rerun(
    prefect_server: dict[str, str], ravdess16k: Path, tmp_path: Path, fault_rng: random.Random, ledger: Ledger
) -> None:
    root = tmp_path / "corpus"
    ids = small_tree(ravdess16k, root, actors=(1, 2), per_actor=6)
    with serve() as ref:  # a whole build, to know every question the teacher gets
        proc = start(root, tmp_path / "reference", config_for(tmp_path / "ref.yaml", ref.base_url), prefect_server)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    questions = {s.key for s in ref.seen}
    assert len(ref.seen) == len(questions) and len(questions) > 2 * len(ids)

    out = tmp_path / "out"
    cache = out / ".pallm" / "teacher.sqlite"
    with serve(Double(delay_s=0.25)) as slow:
        proc = start(root, out, config_for(tmp_path / "a.yaml", slow.base_url), prefect_server)
        deadline = time.monotonic() + 240
        kill_at = max(1, round(fault_rng.uniform(0.1, 0.9) * len(questions)))  # answers cached before the kill
        while answers_in(cache) < kill_at:
            assert proc.poll() is None and time.monotonic() < deadline, "the build ended before the kill"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = answers_in(cache)
    assert 0 < kept < len(questions)

    with serve() as again:
        proc = start(root, out, config_for(tmp_path / "b.yaml", again.base_url), prefect_server)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    asked = [s.key for s in again.seen]
    assert len(asked) == len(set(asked)) == len(questions) - kept  # only what the cache did not hold
    assert set(asked) | {s.key for s in slow.answered()} == questions
    got = rows(out)
    assert [r["id"] for r in got] == ids and all(r["rationale"] for r in got)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == len(ids) and manifest["quarantined"] == 0
    ledger.record("teacher: SIGKILL mid-answers", f"killed with {kept}/{len(questions)} answers cached, rerun asked "
                  f"{len(asked)}", items=len(ids), delivered=len({r['id'] for r in got}),
                  duplicates=len(got) - len({r['id'] for r in got}))  # fmt: skip
