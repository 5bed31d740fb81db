"""How build throughput scales with workers, in this process (threads) and on local Dask and Ray clusters.

    .venv/bin/python bench/bench_distributed.py [--clips 96] [--chunk-rows 16] [--runners serial,dask,ray]

Each build is `pallm build-dataset` on the first N real RAVDESS clips (Whisper tiny.en, rules teacher) into a
fresh folder, against one Prefect server started for the whole benchmark. Wall time includes starting the
cluster and every worker loading its models, as a user would see it. Peak memory is the whole process tree's
(the CLI, the scheduler and every worker) summed, sampled every 0.2 s. Prints one table, ratios against the
serial build with one worker measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from bench_build import start_prefect  # run as a script, bench/ is on the path
from results import Row, add_rows_option, write_rows

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "ravdess16k"


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run a command; its wall time and the peak of its process tree's summed RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_rss(ps))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-3000:]}")
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--chunk-rows", type=int, default=16)
    ap.add_argument("--runners", default="serial,dask,ray")
    add_rows_option(ap)
    args = ap.parse_args()
    if not args.corpus.is_dir():
        raise SystemExit(f"RAVDESS clips not found at {args.corpus}")
    work = Path(tempfile.mkdtemp(prefix="pallm-bench-dist-"))
    server, env = start_prefect(work / "prefect")
    env.update(HF_HUB_OFFLINE="1", PYANNOTE_METRICS_ENABLED="0")
    config = work / "build.yaml"
    config.write_text(f"shards: {{chunk_rows: {args.chunk_rows}}}\n")
    rows = []
    try:
        for runner in args.runners.split(","):
            for workers in (1, 2):
                out = work / f"{runner}-{workers}"
                cmd = [sys.executable, "-m", "pallm.cli", "build-dataset", "--corpus", f"ravdess={args.corpus}",
                       "--limit", str(args.clips), "--asr", "tiny.en", "--teacher", "rules", "--config", str(config),
                       "--runner", runner, "--workers", str(workers), "--out", str(out),
                       "--cards-index", str(work / "cards")]  # fmt: skip
                seconds, peak = measure(cmd, env)
                rows.append((runner, workers, seconds, peak))
                shutil.rmtree(out)
                print(f"{runner} x{workers}: {seconds:.1f} s", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    reference = rows[0][2]
    cpus = os.cpu_count()
    print(f"\nbuild-dataset, {args.clips} RAVDESS clips (tiny.en, rules teacher), chunks of {args.chunk_rows}, "
          f"{cpus} CPUs\n")  # fmt: skip
    print("| runner | workers | seconds | clips/s | speed-up vs serial x1 | peak RSS (tree) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for runner, workers, seconds, peak in rows:
        print(f"| {runner} | {workers} | {seconds:.1f} | {args.clips / seconds:.2f} | {reference / seconds:.2f} | "
              f"{peak / 2**20:.0f} MiB |")  # fmt: skip
    write_rows(args.rows, [Row("distributed", f"build-dataset, {runner} x{workers}", f"{args.clips} clips",
                               args.clips / seconds, args.clips / reference, "clips/s", "serial x1", peak / 2**20)
                           for runner, workers, seconds, peak in rows[1:]])  # fmt: skip


if __name__ == "__main__":
    main()
