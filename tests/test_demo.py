"""`pallm demo`, the README's main command, from nothing to a reviewed dataset and a trained offline backbone,
and Ctrl-C stops everything it started. A smaller corpus and a shorter training keep it to a few minutes here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from conftest import ROOT, _free_port, listening
from review_helpers import csrf_of

pytestmark = pytest.mark.slow


def test_demo_builds_reviews_trains_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    pytest.importorskip("trl", reason="the demo trains: pip install -e '.[dev]'")
    if not shutil.which("espeak-ng"):
        pytest.skip("the built-in corpus needs espeak-ng (bash setup.sh installs it)")
    build = tmp_path / "build.yaml"  # one sentence instead of four: 36 clips
    one_sentence = {"sentences": ["Kids are talking by the door."]}
    build.write_text(json.dumps({"corpora": [{"name": "synthetic", "path": str(tmp_path / "synthetic"),
                                              "options": one_sentence}]}))  # fmt: skip
    # The demo's own training (configs/train-demo.yaml: the offline backbone) with every stage cut to a step or two.
    train = tmp_path / "train.yaml"
    short = yaml.safe_load((ROOT / "configs" / "train-demo.yaml").read_text(encoding="utf-8"))
    short["align"].update(max_steps=2, batch_size=4, save_steps=2)
    short["sft"].update(max_steps=2, batch_size=2, grad_accum=1, save_steps=2)
    short["rl"].update(max_steps=1, batch_size=2, grad_accum=1, num_generations=2, max_completion_length=8,
                       save_steps=1)  # fmt: skip
    short["eval"].update(splits=["validation"], max_new_tokens=8, batch_size=4, limit=2)
    train.write_text(yaml.safe_dump(short))
    prefect_port, ui_port = _free_port(), _free_port()
    work = tmp_path / "demo"
    pallm = str(Path(sys.executable).parent / "pallm")
    proc = subprocess.Popen(
        [pallm, "demo", "--teacher", "rules", "--work", str(work), "--prefect-port", str(prefect_port),
         "--ui-port", str(ui_port), "--build-config", str(build), "--train-config", str(train)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
    )  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 900
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops" in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert "Ctrl-C stops" in output, output[-3000:]
        assert f"http://127.0.0.1:{prefect_port}" in output and f"http://127.0.0.1:{ui_port}" in output
        password = re.search(r"log in as demo / (\S+)\)", output)[1]

        manifest = json.loads((work / "dataset" / "manifest.json").read_text())
        assert manifest["rows"] == 36 and manifest["name"] == "demo"
        report = (work / "run" / "report.md").read_text()
        assert "after-rl" in report and "words-only" in report
        assert "Whisper base encoder (frozen)" in report and "SmolLM2-135M-Instruct with LoRA" in report
        with urllib.request.urlopen(f"http://127.0.0.1:{prefect_port}/api/health", timeout=5) as r:
            assert r.read() == b"true"
        ui = httpx.Client(base_url=f"http://127.0.0.1:{ui_port}", timeout=30)
        r = ui.post("/login", data={"name": "demo", "password": password, "csrf": csrf_of(ui.get("/login").text)})
        assert r.status_code == 303, r.text
        progress = ui.get("/progress").text  # the demo user is an admin, who sees the progress page
        assert manifest["name"] in progress, "the review sample of the demo dataset is in the UI"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, "".join(lines)[-3000:]
    time.sleep(1)
    assert not listening(prefect_port) and not listening(ui_port), "Ctrl-C left a server running"
    assert not [p.pid for p in psutil.process_iter() if demo_process(p, work)], "Ctrl-C left demo processes running"


def demo_process(p: psutil.Process, work: Path) -> bool:
    """Whether a process belongs to the demo in `work` (its Prefect home is there)."""
    try:
        return p.environ().get("PREFECT_HOME", "").startswith(str(work))
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
