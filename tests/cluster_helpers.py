"""Dask and Ray clusters of separate processes on this machine, started as they are on separate machines
(`dask scheduler` + `dask worker`, `ray start --head` + `ray start --address`), for the rehearsal test and
`bench/bench_distributed.py`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
#: What a Ray driver needs to join `ray_cluster`: a loopback rehearsal runs without Ray's token authentication
#: (a real cluster keeps it, with the token on every node).
RAY_LOOPBACK_ENV = {"RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as f:  # the child keeps its own copy of the file
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen], grace: float = 30) -> None:
    for p in reversed(procs):  # workers first, then the scheduler or head
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _wait(ready: Callable[[], bool], procs: list[subprocess.Popen], logs: list[Path], what: str) -> None:
    """Until `ready()`; stops everything and raises with the logs' ends when a process dies or 2 min pass."""
    deadline = time.monotonic() + 120
    while not ready():
        dead = [log for p, log in zip(procs, logs, strict=True) if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            _stop(procs)
            tails = "\n".join(f"{log}:\n{log.read_text(errors='replace')[-1500:]}" for log in dead or logs)
            raise RuntimeError(f"{what} did not start:\n{tails}")
        time.sleep(0.5)


@contextlib.contextmanager
def dask_cluster(work: Path, env: dict[str, str], workers: int = 2) -> Iterator[str]:
    """A Dask scheduler and `workers` single-threaded worker processes; yields the scheduler's tcp:// address."""
    work.mkdir(parents=True, exist_ok=True)
    info = work / "scheduler.json"
    logs = [work / "scheduler.log", *(work / f"worker-{i}.log" for i in range(workers))]
    procs = [_start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(info)], env, logs[0])]  # fmt: skip
    _wait(info.exists, procs, logs[:1], "the Dask scheduler")
    address = json.loads(info.read_text())["address"]
    for i in range(workers):
        procs.append(_start([str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                             "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(work / f"worker-{i}")],
                            env, logs[i + 1]))  # fmt: skip

    try:
        _wait(lambda: _dask_workers(address) == workers, procs, logs, f"{workers} Dask workers")
        yield address
    finally:
        _stop(procs)


def _dask_workers(address: str) -> int:
    from distributed import Client

    with Client(address, timeout=10) as client:
        return len(client.scheduler_info()["workers"])


@contextlib.contextmanager
def ray_cluster(work: Path, env: dict[str, str], nodes: int = 2) -> Iterator[str]:
    """A Ray head and `nodes - 1` worker nodes, one CPU each; yields the head's address (host:port). A driver
    joins it with `RAY_LOOPBACK_ENV` in its environment."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**env, **RAY_LOOPBACK_ENV}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    logs = [work / f"ray-node-{i}.log" for i in range(nodes)]
    procs = [_start([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                     "--include-dashboard", "false", *common], env, logs[0])]  # fmt: skip
    # Asked from another process: a Ray driver in this one would stay connected.
    probe = (f"import ray; ray.init(address={address!r}, log_to_driver=False); "
             "print(ray.cluster_resources().get('CPU', 0))")  # fmt: skip

    def cpus(at_least: int) -> Callable[[], bool]:
        def ready() -> bool:
            r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
            lines = r.stdout.split()
            return r.returncode == 0 and bool(lines) and float(lines[-1]) >= at_least

        return ready

    try:
        _wait(cpus(1), procs, logs[:1], "the Ray head")  # a worker node started earlier fails to join
        for i in range(1, nodes):
            procs.append(_start([str(BIN / "ray"), "start", "--address", address, "--node-ip-address", "127.0.0.1",
                                 *common], env, logs[i]))  # fmt: skip
        _wait(cpus(nodes), procs, logs, f"a Ray cluster of {nodes} nodes")
        yield address
    finally:
        _stop(procs, grace=5)  # a Ray node drains for 30 s first, for nothing here
