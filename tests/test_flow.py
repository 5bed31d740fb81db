"""The build-dataset flow on a real Prefect server: in-process, through the CLI, and as a deployment."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from build_helpers import make_tree, shard_rows
from conftest import ROOT, listening, run_cli

from pallm.corpora.ravdess import EMOTIONS


def test_flow_builds_and_publishes_artifacts(prefect_env: dict[str, str], ravdess16k: Path, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.build_dataset import build_dataset

    root = tmp_path / "ravdess"
    expect = make_tree(ravdess16k, root, real_per_actor=2)
    out = tmp_path / "out"
    summary = build_dataset(
        corpora=[f"ravdess={root}"],
        out=str(out),
        name="flowtest",
        workers=2,
        cards_index=str(tmp_path / "cards"),
        asr="none",
        teacher="rules",
    )
    assert summary["rows"] == len(expect["good"]) and summary["quarantined"] == 7 and summary["chunks_cached"] == 0
    again = build_dataset(corpora=[f"ravdess={root}"], out=str(out), name="flowtest", workers=2, asr="none",
                          teacher="rules")  # fmt: skip
    assert again["chunks_cached"] == again["chunks"] and again["version"] == summary["version"]

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["data-card-flowtest", "counts-flowtest"]))
        )
    kinds = {a.key: a for a in arts}
    assert set(kinds) == {"data-card-flowtest", "counts-flowtest"}
    assert "## Composition" in kinds["data-card-flowtest"].data
    table = (
        json.loads(kinds["counts-flowtest"].data)
        if isinstance(kinds["counts-flowtest"].data, str)
        else kinds["counts-flowtest"].data
    )
    assert sum(r["utterances"] for r in table if r["corpus"] == "ravdess") == len(expect["good"])


def test_cli_builds_the_real_ravdess_clips(prefect_server: dict[str, str], ravdess16k: Path, tmp_path: Path) -> None:
    out = tmp_path / "ravdess"
    proc = run_cli(["build-dataset", "--corpus", f"ravdess={ravdess16k}", "--out", str(out), "--asr", "none",
                    "--teacher", "none", "--cards-index", str(tmp_path / "cards")], prefect_server)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["rows"] == 1200 and summary["quarantined"] == 0
    rows = shard_rows(out, ["id", "emotion_native", "speaker_id", "split"])
    assert len({r["id"] for r in rows}) == 1200
    for r in rows:  # the labels match the file names
        codes = r["id"].removeprefix("ravdess/").split("-")
        assert r["emotion_native"] == EMOTIONS[int(codes[2])] and r["speaker_id"] == f"ravdess/actor{codes[6]}"
    verify = run_cli(["verify", str(out)], prefect_server)
    assert verify.returncode == 0 and "shards intact, 1200 rows" in verify.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--corpus", "ravdess=/nonexistent/RAVDESS"], "ravdess corpus folder /nonexistent/RAVDESS does not exist"),
        (["--corpus", "ravdes=/tmp"], "unknown corpus 'ravdes'"),
        (["--corpus", "manifest=/nonexistent.csv"], "does not exist"),
        (["--asr", "/nonexistent/whisper"], "ASR model folder /nonexistent/whisper does not exist"),
        (["--teacher", "openai"], "teacher backend openai needs a model: --teacher-model NAME"),
        (["--teacher", "openai", "--teacher-model", "gpt"], "needs an API key in $OPENAI_API_KEY"),
        (["--teacher", "gpt"], "teacher.backend: Input should be 'none', 'rules', 'openai' or 'local'"),
    ],
)
def test_cli_stops_at_once_on_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # no server: must fail before Prefect
    env.pop("OPENAI_API_KEY", None)
    start = time.monotonic()
    proc = run_cli(["build-dataset", "--out", str(tmp_path / "o"), *args], env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and time.monotonic() - start < 20


@pytest.mark.parametrize(
    "command", [[], ["build-dataset"], ["train"], ["demo"], ["corpora"], ["labels"], ["verify"], ["serve"]]
)
def test_every_command_has_help(command: list[str]) -> None:
    proc = run_cli([*command, "--help"], dict(os.environ))
    assert proc.returncode == 0 and "Usage:" in proc.stdout and len(proc.stdout) > 200


def test_deployment_run_builds_a_dataset(prefect_server: dict[str, str], ravdess16k: Path, tmp_path: Path) -> None:
    serve = subprocess.Popen(
        [sys.executable, "-m", "pallm.cli", "serve"], cwd=ROOT, env=prefect_server,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        prefect = str(Path(sys.executable).parent / "prefect")
        deadline = time.monotonic() + 120
        while subprocess.run([prefect, "deployment", "inspect", "build-dataset/default"], env=prefect_server,
                             capture_output=True).returncode != 0:  # fmt: skip
            assert serve.poll() is None and time.monotonic() < deadline, "pallm serve did not register deployments"
            time.sleep(1)
        out = tmp_path / "deployed"
        run = subprocess.run(
            [prefect, "deployment", "run", "build-dataset/default", "--param", f'corpora=["ravdess={ravdess16k}"]',
             "--param", f"out={out}", "--param", "limit=24", "--param", "name=deployed",
             "--param", f"cards_index={tmp_path / 'cards'}", "--watch",
             "--watch-timeout", "300"],
            env=prefect_server, capture_output=True, text=True, timeout=360,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert "Completed" in run.stdout
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["rows"] == 24 and manifest["name"] == "deployed" and manifest["run_id"]
        # the deployment's default is the full pipeline: Whisper tiny.en, the cues and the local LLM teacher
        # (SmolLM2 behind llama-cpp-python's server, started and stopped by the flow) ran on every clip
        assert manifest["config"]["asr"] == "tiny.en" and manifest["config"]["teacher"]["backend"] == "local"
        assert set(manifest["stages"]) == {"audio", "speech", "cues", "describe", "lexical", "teacher"}
        answered = shard_rows(out, ["rationale", "reply", "words_only_reply", "teacher", "checks"])
        assert len(answered) + manifest["quarantined"] == 24
        for r in answered:
            assert r["rationale"] and r["reply"] and r["words_only_reply"] and r["checks"] is not None
            assert r["teacher"]["model"].lower().startswith("smollm2") and r["teacher"]["completion_tokens"] > 0
        assert "### Teacher: rationales and replies" in (out / "README.md").read_text()
        rows = shard_rows(out, ["transcript", "words", "asr_wer", "f0_mean_hz", "f0_mean_z", "cue_words"])
        assert all(r["transcript"] and r["words"] and r["f0_mean_hz"] for r in rows)
        # the first 24 ids are one or two clips per actor: too few for per-speaker z-scores, so none are made up
        assert all(r["f0_mean_z"] is None and not any(w.startswith("pitch: ") for w in r["cue_words"]) for r in rows)
        assert sum(r["asr_wer"] for r in rows) / len(rows) < 0.2
        assert "### Speech: transcripts and word timestamps" in (out / "README.md").read_text()
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)


def test_prefect_yaml_deploys_to_a_process_pool_and_a_finished_build_starts_training(
    prefect_env: dict[str, str], ravdess16k: Path, tmp_path: Path
) -> None:
    """`prefect deploy --all`, then a worker of the process pool runs a build whose `train` parameter queues a
    train-pallm run on the finished dataset through that deployment."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

    prefect = str(Path(sys.executable).parent / "prefect")

    def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([prefect, "--no-prompt", *args], cwd=ROOT, env=prefect_env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    created = cli("work-pool", "create", "pallm-process", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    for pool in ("pallm-k8s-cpu", "pallm-k8s-gpu"):
        created = cli("work-pool", "create", pool, "--type", "kubernetes", "--base-job-template",
                      str(ROOT / "deploy" / "k8s-job-template.json"), "--overwrite")  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
    deployed = cli("deploy", "--all", timeout=180)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    inspected = cli("deployment", "inspect", "build-dataset/demo")
    assert inspected.returncode == 0 and "pallm-process" in inspected.stdout
    gpu = cli("deployment", "inspect", "train-pallm/gpu")
    assert gpu.returncode == 0 and "pallm-k8s-gpu" in gpu.stdout and "'gpus': 8" in gpu.stdout, gpu.stdout
    assert "nvidia.com/gpu.present" in gpu.stdout, "the node selector reaches the deployment"

    out, run = tmp_path / "from-pool", tmp_path / "run"
    train_params = json.dumps({"out": str(run), "config": "configs/train-tiny.yaml"})
    queued = cli("deployment", "run", "build-dataset/default", "--param", f'corpora=["ravdess={ravdess16k}"]',
                 "--param", f"out={out}", "--param", "limit=6", "--param", "name=pool", "--param", "teacher=rules",
                 "--param", f"cards_index={tmp_path / 'cards'}", "--param", "train=train-pallm/cpu",
                 "--param", f"train_parameters={train_params}")  # fmt: skip
    assert queued.returncode == 0, queued.stdout + queued.stderr
    worker = cli("worker", "start", "--pool", "pallm-process", "--run-once", timeout=300)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 6 and manifest["name"] == "pool"

    # The build queued the training through its deployment and did not run it: a worker of the training's pool
    # will (tests/test_demo.py follows a queued training to its report).
    with get_client(sync_client=True) as client:
        only_cpu = DeploymentFilter(name=DeploymentFilterName(any_=["cpu"]))
        (training,) = client.read_flow_runs(deployment_filter=only_cpu, flow_run_filter=FlowRunFilter())
    assert training.state.is_scheduled(), training.state
    assert training.parameters == {"dataset": str(out.resolve()), "out": str(run), "config": "configs/train-tiny.yaml"}
    assert f"dataset:pool-{manifest['version']}" in training.tags
    assert not run.exists()


def test_cli_config_file_options_reach_the_build(
    prefect_server: dict[str, str], ravdess16k: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ravdess"
    make_tree(ravdess16k, root, real_per_actor=1)
    out, cards = tmp_path / "out", tmp_path / "my-cards"
    config = tmp_path / "build.yaml"
    config.write_text(
        f"name: fromfile\nout: {out}\ncards_index: {cards}\nasr: none\nteacher: none\n"
        f"corpora:\n  - {{name: ravdess, path: {root}, options: {{test_folds: [3], validation_folds: []}}}}\n"
    )
    proc = run_cli(["build-dataset", "--config", str(config)], prefect_server)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = shard_rows(out, ["speaker_id", "split"])
    test_speakers = {r["speaker_id"] for r in rows if r["split"] == "test"}
    assert test_speakers == {"ravdess/actor09", "ravdess/actor10"}  # fold 3, from the file's options
    assert {r["split"] for r in rows} == {"train", "test"}
    assert json.loads((cards / "index.json").read_text())[0]["name"] == "fromfile"


def test_sigterm_stops_the_temporary_prefect_server(ravdess16k: Path, tmp_path: Path) -> None:
    """Without a Prefect server the CLI starts a temporary one; a SIGTERM (as from `kill` or a scheduler) must
    not leave it running: SIGTERM's default action skipped the atexit hook that stops it."""
    root = tmp_path / "corpus"
    make_tree(ravdess16k, root, real_per_actor=6, actors=(1, 2))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "home")}
    log = tmp_path / "cli.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pallm.cli", "build-dataset", "--corpus", f"ravdess={root}", "--out",
             str(tmp_path / "out"), "--asr", "tiny.en", "--teacher", "rules", "--cards-index", str(tmp_path / "c")],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 240
    while "Beginning flow run" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    port = int(re.search(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", log.read_text())[1])
    assert listening(port)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    deadline = time.monotonic() + 15
    while listening(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not listening(port), "the temporary Prefect server outlived the command"
    assert "Stopping temporary server" in log.read_text()
