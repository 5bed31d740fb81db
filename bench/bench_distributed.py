"""What a cluster costs a build: the same build in this process (threads) and on Dask and Ray, local and as
separate processes, with the model loads and the per-chunk overhead each build's manifest records.

    .venv/bin/python bench/bench_distributed.py [--clips 240] [--chunk-rows 16] [--runners serial,dask,...]

Each build is `pallm build-dataset` on the first N real RAVDESS clips (Whisper tiny.en, rules teacher) into a
fresh folder, against one Prefect server started for the whole benchmark, with two workers:

- `serial`: the in-process runner with two threads (the reference);
- `dask`, `ray`: the local cluster the CLI starts itself (`--runner dask|ray`);
- `dask cluster`, `ray cluster`: a Dask scheduler and two worker processes, a Ray head and a worker node,
  started beforehand as they would be on separate machines (`--cluster ADDRESS`); their start-up is not in
  the wall time, the models' loads are. The default `--runners` runs all five.

Wall time includes every worker loading its models. Peak memory is the process tree's summed RSS (the CLI and
what it starts; the separate clusters' processes are counted too), sampled every 0.2 s. The table gives the
rate as a share of the in-process build's, the models loaded per worker (from the manifest's `model_loads`),
the load time, and the chunk tasks' start-to-first-clip time (`chunk_start`). Every build's shards (path and
content hash) must equal the first build's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from bench_build import start_prefect  # run as a script, bench/ is on the path
from results import Row, add_rows_option, write_rows

from pallm.dataset import read_manifest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from cluster_helpers import RAY_LOOPBACK_ENV, dask_cluster, ray_cluster  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "ravdess16k"
WORKERS = 2


@dataclass
class Build:
    """One build's measurements."""

    name: str
    seconds: float
    peak: int
    manifest: dict

    def loads(self, kind: str) -> list[dict]:
        """The manifest's load counts of one kind of model ("whisper", "aligner", ...), per worker."""
        return [x for x in self.manifest["model_loads"] if x["model"].split()[0] == kind]


def tree_rss(procs: list[psutil.Process]) -> int:
    """Resident memory of processes and all their descendants, in bytes."""
    seen = {p.pid: p for root in procs for p in [root, *_children(root)]}
    total = 0
    for p in seen.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def measure(cmd: list[str], env: dict[str, str], also: list[psutil.Process]) -> tuple[float, int]:
    """Run a command; its wall time and the peak of the summed RSS of its process tree and of `also`'s."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched, peak = [psutil.Process(proc.pid), *also], 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(watched))
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-3000:]}")
    return seconds, peak


@contextlib.contextmanager
def cluster(kind: str, work: Path, env: dict[str, str]) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The CLI options and environment for a build on `kind`, with the separate cluster running meanwhile."""
    if kind == "dask cluster":
        with dask_cluster(work / "dask", env, workers=WORKERS) as address:
            yield ["--runner", "dask", "--cluster", address], env
    elif kind == "ray cluster":
        env = {**env, **RAY_LOOPBACK_ENV}
        with ray_cluster(work / "ray", env, nodes=WORKERS) as address:
            yield ["--runner", "ray", "--cluster", address], env
    else:
        yield ["--runner", kind, "--workers", str(WORKERS)], env


def started_since(before: set[int]) -> list[psutil.Process]:
    """The processes started since the pids `before` were taken (a separate cluster's)."""
    found = []
    for pid in set(psutil.pids()) - before:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def shard_hashes(manifest: dict) -> list[tuple[str, str]]:
    """What must be equal between builds: every shard's path and content hash."""
    return sorted((s["path"], s["sha256"]) for s in manifest["shards"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--clips", type=int, default=240)
    ap.add_argument("--chunk-rows", type=int, default=16)
    ap.add_argument("--runners", default="serial,dask,ray,dask cluster,ray cluster")
    add_rows_option(ap)
    args = ap.parse_args()
    if not args.corpus.is_dir():
        raise SystemExit(f"RAVDESS clips not found at {args.corpus}")
    work = Path(tempfile.mkdtemp(prefix="pallm-bench-dist-"))
    server, env = start_prefect(work / "prefect")
    env.update(HF_HUB_OFFLINE="1", PYANNOTE_METRICS_ENABLED="0")
    config = work / "build.yaml"
    config.write_text(f"shards: {{chunk_rows: {args.chunk_rows}}}\n")
    builds: list[Build] = []
    try:
        for i, kind in enumerate(k.strip() for k in args.runners.split(",")):
            out = work / f"out-{i}"
            before = set(psutil.pids())
            with cluster(kind, work / f"cluster-{i}", env) as (options, build_env):
                cmd = [sys.executable, "-m", "pallm.cli", "build-dataset", "--corpus", f"ravdess={args.corpus}",
                       "--limit", str(args.clips), "--asr", "tiny.en", "--teacher", "rules", "--config", str(config),
                       *options, "--out", str(out), "--cards-index", str(work / "cards")]  # fmt: skip
                seconds, peak = measure(cmd, build_env, started_since(before))
            build = Build(kind, seconds, peak, read_manifest(out))
            if builds and shard_hashes(build.manifest) != shard_hashes(builds[0].manifest):
                raise SystemExit(f"the {kind} build's shards differ from the {builds[0].name} build's")
            builds.append(build)
            shutil.rmtree(out)
            print(f"{kind}: {seconds:.1f} s", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    reference = builds[0]
    chunks = -(-args.clips // args.chunk_rows)
    print(f"\nbuild-dataset, {args.clips} RAVDESS clips (tiny.en, rules teacher), {chunks} chunks of "
          f"{args.chunk_rows}, {WORKERS} workers, {os.cpu_count()} CPUs; every build's shards equal the "
          f"{reference.name} build's\n")  # fmt: skip
    print("| build | seconds | clips/s | share of in-process | Whisper loads (per worker) | load s (mean) "
          "| chunk start → first clip (median / max) | peak RSS |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | --- | ---: | --- | ---: |")
    for b in builds:
        whisper = b.loads("whisper")
        per_worker = ", ".join(str(x["loads"]) for x in whisper) or "0"
        n = sum(x["loads"] for x in whisper)
        load_s = sum(x["seconds"] for x in whisper) / n if n else float("nan")
        start = b.manifest["chunk_start"]
        started = f"{start['median_s'] * 1e3:.0f} / {start['max_s'] * 1e3:.0f} ms" if start["chunks"] else "n/a"
        print(f"| {b.name} | {b.seconds:.1f} | {args.clips / b.seconds:.2f} | {reference.seconds / b.seconds:.2f} "
              f"| {n} ({per_worker}) | {load_s:.1f} | {started} | {b.peak / 2**20:.0f} MiB |")  # fmt: skip
    others = sorted({x["model"].split()[0] for b in builds for x in b.manifest["model_loads"]} - {"whisper"})
    for model in others:
        counts = ", ".join(f"{b.name} {sum(x['loads'] for x in b.loads(model))}" for b in builds)
        print(f"\n{model} loads: {counts}")
    write_rows(args.rows, [Row("distributed", f"build-dataset, {b.name} x{WORKERS}", f"{args.clips} clips",
                               args.clips / b.seconds, args.clips / reference.seconds, "clips/s",
                               f"{reference.name} x{WORKERS}", b.peak / 2**20)
                           for b in builds[1:]])  # fmt: skip


if __name__ == "__main__":
    main()
