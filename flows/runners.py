"""Where a build's chunk tasks run: threads in the flow's process, or a Dask or Ray cluster.

The flow is the same for all three; only the task runner changes. A local cluster (no `cluster` address)
starts `workers` single-threaded worker processes on this machine and stops them with the flow. A remote
cluster needs the dataset folder on storage every worker sees, and a teacher endpoint they can reach.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from pallm.config import BuildConfig
from pallm.resident import PLUGIN_NAME

#: The package each distributed runner needs, installed by the extra of the runner's name.
PACKAGES = {"dask": "prefect_dask", "ray": "prefect_ray"}


def check_runner(cfg: BuildConfig) -> None:
    """Raise ValueError, naming the extra to install, when the runner's package is missing."""
    package = PACKAGES.get(cfg.runner)
    if package and importlib.util.find_spec(package) is None:
        raise ValueError(f"runner {cfg.runner!r} needs the {cfg.runner} extra: pip install -e '.[{cfg.runner}]'")


def task_runner(cfg: BuildConfig) -> TaskRunner:
    """The Prefect task runner `cfg.runner` names."""
    check_runner(cfg)
    if cfg.runner == "serial":
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    if cfg.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.cluster:
            return DaskTaskRunner(address=cfg.cluster)
        # One thread per process: the chunk work is native code that brings its own threads.
        local = {"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local)
    from prefect_ray import RayTaskRunner

    if cfg.cluster:
        return RayTaskRunner(address=cfg.cluster)
    # address "local": a new cluster even where `ray start` has left one (or its address file) on this machine.
    local = {"address": "local", "num_cpus": cfg.workers, "include_dashboard": False, "log_to_driver": False}
    return RayTaskRunner(init_kwargs=local)


@contextlib.contextmanager
def asking_for_gpus(cfg: BuildConfig) -> Iterator[None]:
    """Tasks submitted inside ask the cluster for `cfg.asr_gpus` GPUs each (a Dask worker resource named
    "GPU", Ray's num_gpus), so they run on GPU workers. Local clusters and threads ignore it."""
    if cfg.asr_gpus <= 0 or not cfg.cluster or cfg.runner == "serial":
        yield
    elif cfg.runner == "dask":
        import dask

        with dask.annotate(resources={"GPU": cfg.asr_gpus}):
            yield
    else:
        from prefect_ray.context import remote_options

        # Ray retires a GPU task's process after one call unless told otherwise, which would load Whisper
        # again for every chunk; the process's residents (`pallm.resident`) are what frees the models.
        with remote_options(num_gpus=cfg.asr_gpus, max_calls=0):
            yield


@contextlib.contextmanager
def keeping_models(cfg: BuildConfig, runner: TaskRunner) -> Iterator[int]:
    """Inside, each worker process keeps the models its chunk tasks load (`pallm.resident`): on Dask, a worker
    plugin holds them and frees them on the way out. Yields how many processes run chunk tasks at once, each
    with its own teacher client (threads share the flow's one)."""
    if cfg.runner == "dask":
        from flows.residents import ResidentsPlugin

        client = runner.client  # type: ignore[attr-defined]
        client.register_plugin(ResidentsPlugin(), name=PLUGIN_NAME)
        try:
            yield max(1, len(client.scheduler_info()["workers"]))
        finally:
            client.unregister_worker_plugin(PLUGIN_NAME)
    elif cfg.runner == "ray":
        import ray

        # Ray runs each task in a worker process of its own and reuses the processes: one per CPU at most.
        yield max(1, int(ray.cluster_resources().get("CPU", 1)))
    else:
        yield 1


def teacher_share(concurrency: int, processes: int) -> tuple[int, int | None]:
    """Requests in flight per process, and the most describe tasks to run at once (None: no limit), so that
    the whole build never has more than `concurrency` requests in flight however many workers there are."""
    if processes <= concurrency:
        return concurrency // processes, None
    return 1, concurrency
