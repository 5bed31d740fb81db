"""Stage workers that hold loaded models, built once per worker process and reused by every chunk task there.

A stage's process object (Whisper's `SpeechStep`, the teacher's client) loads its models on first use. In the
flow's own process every chunk task shares that one object. A task sent to a Dask or Ray worker gets a copy
without the models (the objects pickle without them); `Resident` makes that copy look up the one object of
its key in the worker process's `Residents` instead, so the models load once per worker, not once per chunk.

Who owns the `Residents` of a process:

- a Dask worker: the worker plugin the flow registers on the cluster (`flows.residents.ResidentsPlugin`),
  found through `distributed.get_worker()`; unregistering it at the end of the flow releases the models;
- any other process (a Ray worker, whose processes Ray reuses across tasks; the flow's own process): the
  process's `Residents`, `for_process()`, released with `release_process()`. A Ray worker keeps its models
  until Ray retires the process (a local cluster stops with the flow) or a build of other settings replaces
  them: a holder keeps one object of each kind, so memory stays bounded across builds.

Model loads are counted (`LoadLog`): each chunk result carries the loads that happened while it ran, and the
build's log and manifest add them up per worker.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

from pallm.stages import Stage

T = TypeVar("T")
#: The name of the Dask worker plugin that holds a worker's residents.
PLUGIN_NAME = "pallm-residents"


def worker_id() -> str:
    """This process, as the build's log and manifest name it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Load:
    """One model load: what, where, and how long it took."""

    model: str
    worker: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoadLog:
    """The model loads of one stage worker, until a chunk task takes them (each load is taken once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loads: list[Load] = []

    def timed(self, model: str, load: Callable[[], T]) -> T:
        """Run `load()` and record it as a load of `model`."""
        start = time.perf_counter()
        loaded = load()
        with self._lock:
            self._loads.append(Load(model, worker_id(), round(time.perf_counter() - start, 3)))
        return loaded

    def take(self) -> list[Load]:
        """The loads recorded since the last call."""
        with self._lock:
            loads, self._loads = self._loads, []
        return loads


def summarize_loads(loads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Loads added up per worker and model: `[{worker, model, loads, seconds}]`, sorted."""
    totals: dict[tuple[str, str], list[float]] = {}
    for x in loads:
        totals.setdefault((x["worker"], x["model"]), []).append(x["seconds"])
    return [
        {"worker": w, "model": m, "loads": len(s), "seconds": round(sum(s), 3)} for (w, m), s in sorted(totals.items())
    ]


class Residents:
    """The stage workers one process keeps: one object per key, and per kind (class) the latest key only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, Any] = {}

    def get(self, key: str, candidate: T) -> T:
        """The object kept under `key`; `candidate` becomes it when there is none (releasing an object of the
        same kind kept under another key: a build of other settings replaces it)."""
        with self._lock:
            kept = self._objects.get(key)
            if kept is not None:
                return kept
            stale = [k for k, o in self._objects.items() if type(o) is type(candidate)]
            old = [self._objects.pop(k) for k in stale]
            self._objects[key] = candidate
        for o in old:
            _close(o)
        return candidate

    def release(self) -> None:
        """Close every object kept (which frees its models) and forget them."""
        with self._lock:
            objects, self._objects = list(self._objects.values()), {}
        for o in objects:
            _close(o)

    def __len__(self) -> int:
        return len(self._objects)


def _close(obj: Any) -> None:
    close = getattr(obj, "close", None)
    if callable(close):
        close()


class _ProcessResidents:
    """The holder of a process that is not a Dask worker with the plugin: made on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.residents: Residents | None = None

    def get(self) -> Residents:
        with self._lock:
            if self.residents is None:
                self.residents = Residents()
            return self.residents

    def release(self) -> None:
        with self._lock:
            residents, self.residents = self.residents, None
        if residents is not None:
            residents.release()


_PROCESS = _ProcessResidents()


def for_process() -> Residents:
    """The residents of this process: its Dask worker plugin's, else the process's own."""
    try:
        from distributed import get_worker

        plugin = get_worker().plugins.get(PLUGIN_NAME)
    except (ImportError, ValueError):  # not on a Dask worker
        plugin = None
    held = getattr(plugin, "residents", None)
    return held if isinstance(held, Residents) else _PROCESS.get()


def release_process() -> None:
    """Release the process's own residents (a Ray worker's, or in tests)."""
    _PROCESS.release()


class Resident:
    """A stage's process that, once sent to another process, works through the one object of its key there.

    In the process that made it, it is its object. Its copy in a worker process is bound on first use to the
    object `for_process()` keeps under the key (its own unpickled object when there is none yet), so every
    chunk task of that worker shares one loaded model. Attributes (`stats`, `loads`, `close`) are the object's.
    """

    def __init__(self, key: str, obj: Any, bound: bool = True) -> None:
        self.key = key
        self._obj = obj
        self._bound = bound
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        return Resident, (self.key, self._obj, False)

    @property
    def target(self) -> Any:
        """The object this process works through."""
        with self._lock:
            if not self._bound:
                self._obj = for_process().get(self.key, self._obj)
                self._bound = True
            return self._obj

    def __call__(self, rows: list[Any]) -> list[Any]:
        return self.target(rows)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not during unpickling, before __init__ has run
            raise AttributeError(name)
        return getattr(self.target, name)


def resident(stage: Stage) -> Stage:
    """The stage with its process kept per worker process (see `Resident`), under a key that changes with
    anything that changes the object: its fingerprint and its constructor's arguments, runtime ones too."""
    args = hashlib.sha256(pickle.dumps(stage.process)).hexdigest()[:16]
    return replace(stage, process=Resident(f"{stage.name}-{stage.fingerprint()}-{args}", stage.process))
