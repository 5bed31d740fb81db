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
    return RayTaskRunner(init_kwargs={"num_cpus": cfg.workers, "include_dashboard": False, "log_to_driver": False})


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

        with remote_options(num_gpus=cfg.asr_gpus):
            yield
