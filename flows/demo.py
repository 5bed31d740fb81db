"""`pallm demo`: the whole product on this machine, in one command.

It starts a Prefect server, deploys `build-dataset/demo` and `train-pallm/cpu` to the local process work pool
and starts a worker for it; runs the build on the built-in synthetic corpus (the build serves the local
teacher itself), which hands the finished dataset to a short training run of the offline backbone
(configs/train-demo.yaml: alignment, SFT, RL, evaluation); imports a review sample into the
annotation UI and starts it; and prints where to look. Everything it started stops on Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

ROOT = Path(__file__).resolve().parents[1]
POOL = "pallm-process"
BUILD, TRAIN = "build-dataset/demo", "train-pallm/cpu"
DEMO_TRAINING = ROOT / "configs" / "train-demo.yaml"


def free_port(preferred: int) -> int:
    """`preferred` when nothing listens there, else a free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


class Services:
    """The processes the demo started; `stop()` ends each one's whole process group."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} stopped (exit {proc.returncode}); see {self.logs / name}.log")

    def stop(self, grace: float = 20) -> None:
        """Ctrl-C to every service at once, then a kill to those still running after `grace` seconds in all (not
        each: a loaded machine must not make the stop outlast the caller's patience)."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                _signal_group(proc, signal.SIGINT)
        deadline = time.monotonic() + grace
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to the process group a service leads (gone already: nothing to do)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def wait_for(url: str, services: Services, what: str, timeout: float = 120) -> None:
    """Poll `url` until it answers, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.check()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the {what} did not answer at {url} within {timeout:.0f} s")


def prefect(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    """Run the Prefect CLI of this environment; its output, or an error with it."""
    cmd = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-2000:]}")
    return done.stdout


def flow_run_progress(client: Any, run_id: Any) -> float | None:
    """The latest value of a flow run's progress artifact (percent), if it has one."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    arts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), type=ArtifactFilterType(any_=["progress"])
        )
    )
    return float(arts[-1].data) if arts else None


def current_task(client: Any, run_id: Any) -> str:
    """The name of the flow run's task that is running now ('' when none is)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    running = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
        task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))),
    )
    return ", ".join(sorted(t.name for t in running))


def watch(client: Any, run_id: Any, label: str, services: Services, console: Console) -> Any:
    """Show a flow run's state, progress and running task until it ends; the final flow run."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}"))  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(label, total=100, status="queued")
        while True:
            services.check()
            run = client.read_flow_run(run_id)
            pct = flow_run_progress(client, run_id)
            status = run.state.name if run.state else "?"
            if run.state and run.state.is_running():
                status = current_task(client, run_id) or status
            progress.update(bar, completed=pct or 0, status=status)
            if run.state and run.state.is_final():
                if run.state.is_completed():
                    progress.update(bar, completed=100)
                return run
            time.sleep(1)


@contextmanager
def services_stopped_on_exit(services: Services, console: Console) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        console.print("\nstopping…")
    finally:
        services.stop()


def run_demo(
    teacher: str = "local",
    work: Path = ROOT / "demo",
    prefect_port: int = 4200,
    ui_port: int = 8000,
    build_config: Path | None = None,
    train_config: Path | None = None,
    keep_serving: bool = True,
) -> dict[str, Any]:
    """The demo, end to end, everything in `work` (dataset, run, Prefect's database, review store, logs);
    returns where things are. Blocks until Ctrl-C when `keep_serving`. `build_config` and `train_config`
    replace the demo's defaults (the whole built-in corpus; configs/train-demo.yaml)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    console = Console()
    work = work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    dataset, run_dir, db = work / "dataset", work / "run", f"sqlite:///{work / 'review.sqlite'}"
    prefect_port, ui_port = free_port(prefect_port), free_port(ui_port)
    api = f"http://127.0.0.1:{prefect_port}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(work / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
           "PYANNOTE_METRICS_ENABLED": "0"}  # fmt: skip
    services = Services(work / "logs")
    bin_dir = Path(sys.executable).parent
    with services_stopped_on_exit(services, console), temporary_settings(updates={PREFECT_API_URL: api}):
        with console.status("starting the Prefect server…"):
            services.start("prefect-server", [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
                                              "--port", str(prefect_port)], env)  # fmt: skip
            wait_for(f"{api}/health", services, "Prefect server")
        with console.status(f"deploying {BUILD} and {TRAIN} to the {POOL} pool, starting a worker…"):
            prefect(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
            prefect(env, "deploy", "--name", BUILD, "--name", TRAIN)
            services.start("worker", [str(bin_dir / "prefect"), "worker", "start", "--pool", POOL], env)
        console.print(f"Prefect UI: http://127.0.0.1:{prefect_port}  (logs of every process: {work / 'logs'})")
        train_config = train_config or DEMO_TRAINING
        training = {"out": str(run_dir), "config": str(train_config.resolve())}
        parameters = {"out": str(dataset), "teacher": teacher, "cards_index": str(work / "cards"), "train": TRAIN,
                      "train_parameters": training}  # fmt: skip
        if build_config:
            parameters["config"] = str(build_config.resolve())
        build = run_deployment(BUILD, parameters=parameters, timeout=0)
        with get_client(sync_client=True) as client:
            voice = "the local teacher (SmolLM2, served by the build)" if teacher == "local" else "the rules teacher"
            done = watch(client, build.id, f"build-dataset: the synthetic corpus, {voice}", services, console)
            if not done.state.is_completed():
                raise RuntimeError(f"the build ended {done.state.name}; see the Prefect UI")
            with console.status("importing a review sample…"):
                password = import_review_sample(dataset, db)
            services.start("annotation-ui", [str(bin_dir / "pallm"), "review", "serve", "--port", str(ui_port),
                                             "--db", db], env)  # fmt: skip
            wait_for(f"http://127.0.0.1:{ui_port}/login", services, "annotation UI")
            done = watch(client, training_run(client, dataset), f"train-pallm: {training_summary(train_config)}",
                         services, console)  # fmt: skip
            if not done.state.is_completed():
                raise RuntimeError(f"the training ended {done.state.name}; see the Prefect UI")
        where = {
            "prefect_ui": f"http://127.0.0.1:{prefect_port}",
            "data_card": str(dataset / "README.md"),
            "annotation_ui": f"http://127.0.0.1:{ui_port}",
            "reviewer": {"name": "demo", "password": password},
            "report": str(run_dir / "report.md"),
        }
        console.print(
            f"\n[bold]Done.[/bold] Where to look:\n"
            f"  Prefect UI        {where['prefect_ui']}  (flow runs, their artifacts: the data card, counts, report)\n"
            f"  data card         {where['data_card']}\n"
            f"  annotation UI     {where['annotation_ui']}  (log in as demo / {password})\n"
            f"  training report   {where['report']}\n"
        )
        if keep_serving:
            console.print("Ctrl-C stops the Prefect server, the worker and the annotation UI.")
            while True:
                services.check()
                time.sleep(1)
    return where


def training_summary(config: Path) -> str:
    """What the demo's training run does, in words, for its progress line."""
    from pallm.train.config import TrainConfig

    cfg = TrainConfig.load(config)
    model = "the offline backbone" if cfg.model.family == "offline" else f"the {cfg.model.size} Qwen2-Audio"
    stages = [*(["alignment"] if cfg.align else []), "SFT", "RL", "evaluation"]
    return f"{model}, {', '.join(stages)}"


def import_review_sample(dataset: Path, db: str, sample: int = 24) -> str:
    """A stratified sample (and every flagged item) into the review store, and a reviewer `demo` with a fresh
    password, which is returned."""
    from pallm.review import auth
    from pallm.review.db import open_db
    from pallm.review.importer import import_dataset

    password = secrets.token_urlsafe(9)
    with open_db(db) as sessions, sessions() as s:
        import_dataset(s, dataset, sample=sample)
        auth.add_user(s, "demo", "admin", password)
    return password


def training_run(client: Any, dataset: Path) -> Any:
    """The id of the train-pallm run the build queued for `dataset`."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[TRAIN.split("/")[1]])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
    )
    mine = [r for r in runs if r.parameters.get("dataset") == str(dataset.resolve())]
    if not mine:
        raise RuntimeError("the build did not queue a training run")
    return mine[0].id
