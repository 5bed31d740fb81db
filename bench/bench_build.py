"""Benchmark of the build machinery (no ASR, no teacher) on the real RAVDESS clips, against a plain loop
doing the same work per clip: read, resample, measure the cues.

    .venv/bin/python bench/bench_build.py [--corpus ../shared/corpora/ravdess16k] [--workers N]

Every measurement runs in its own subprocess so its peak memory (max RSS) is its own. Prints one table:
stage, workload, seconds, clips/s, ratio to the floor measured in the same run, peak memory. The ratio
is what planning, caching, chunking, the Parquet shards, speaker norms and the card add to the work.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import Row, add_rows_option, write_rows  # run as a script, bench/ is on the path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "ravdess16k"


def job_floor(corpus: Path, workers: int) -> dict:
    """The floor: read, resample and measure the cues of every file, in a plain pool of as many threads."""
    from concurrent.futures import ThreadPoolExecutor

    import soundfile as sf
    import soxr

    from pallm.audio.cues import measure

    def one(f: Path) -> None:
        x, rate = sf.read(str(f), dtype="float32", always_2d=True)
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
        if rate != 16_000:
            x = soxr.resample(x, rate, 16_000, quality="HQ")
        measure(x, 16_000, None)

    files = sorted(corpus.rglob("*.wav"))
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))
    return {"seconds": time.perf_counter() - t, "clips": len(files)}


def job_core(corpus_spec: str, out: Path, workers: int) -> dict:
    """plan + chunks (decode, check, shards) + finalise, with the pipeline functions and a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    import pandas  # noqa: F401 - imported by the flow before work starts; keep it out of the timing

    from pallm import pipeline
    from pallm.config import BuildConfig, CorpusSpec

    cfg = BuildConfig(corpora=[CorpusSpec.parse(corpus_spec)], out=out, workers=workers, asr="none", teacher="none")
    t0 = time.perf_counter()
    plan = pipeline.plan(cfg)
    pipeline.prepare_output(out)
    t1 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = pipeline.run_chunks(plan, out, pool.map)
    t2 = time.perf_counter()
    pipeline.finalize(plan, results, out)
    t3 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "plan": t1 - t0,
        "chunks": t2 - t1,
        "finalize": t3 - t2,
        "clips": sum(r.rows for r in results),
        "cached": sum(r.cached for r in results),
        "n_chunks": len(results),
    }


def run_job(args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run one measurement in a fresh interpreter; returns its result (with its own peak RSS)."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed_cli(args: list[str], env: dict[str, str]) -> dict:
    """Run the `pallm` command; wall time and the peak RSS of the process tree's largest member."""
    t = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", str(Path(sys.executable).parent / "pallm"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    return {
        "seconds": time.perf_counter() - t,
        "clips": summary["rows"],
        "peak_mib": int(proc.stderr.strip().splitlines()[-1]) / 1024,
        "cached": summary["chunks_cached"],
    }


def manifest_of(corpus: Path, copies: int, folder: Path) -> Path:
    """A manifest listing every clip `copies` times under distinct ids (a corpus N times larger)."""
    from pallm.corpora.ravdess import EMOTIONS, parse_name

    unified = {"disgust": "disgusted"}
    path = folder / f"x{copies}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "label", "speaker"])
        for k in range(copies):
            for clip in sorted(corpus.rglob("*.wav")):
                codes = parse_name(clip.stem)
                label = EMOTIONS[codes["emotion"]]
                w.writerow([f"copy{k}/{clip.stem}", str(clip), unified.get(label, label), f"c{k}-a{codes['actor']}"])
    return path


def start_prefect(home: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(180):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return proc, env
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("Prefect server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    add_rows_option(ap)
    a = ap.parse_args()
    if a.job:
        result = job_floor(a.corpus, a.workers) if a.job == "floor" else job_core(a.spec, a.out, a.workers)
        print(json.dumps(result | {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    if not a.corpus.is_dir():
        sys.exit(f"corpus {a.corpus} not found: pass --corpus DIR (the RAVDESS clips)")
    tmp = Path(tempfile.mkdtemp(prefix="pallm-bench-"))
    rows: list[tuple[str, str, dict]] = []
    try:
        w = ["--workers", str(a.workers)]
        run_job(["--job", "floor", "--corpus", str(a.corpus), *w])  # warm the page cache
        floor = run_job(["--job", "floor", "--corpus", str(a.corpus), *w])
        rows.append(("floor: read+resample+cues loop", "ravdess 1x", floor))
        rows.append(
            (
                "core: plan + audio + shards",
                "ravdess 1x",
                run_job(["--job", "core", "--spec", f"ravdess={a.corpus}", "--out", str(tmp / "core"), *w]),
            )
        )
        rows.append(
            (
                "core: rerun, nothing changed",
                "ravdess 1x",
                run_job(["--job", "core", "--spec", f"ravdess={a.corpus}", "--out", str(tmp / "core"), *w]),
            )
        )
        for copies in (1, 4):
            m = manifest_of(a.corpus, copies, tmp)
            rows.append(
                (
                    "core: plan + audio + shards",
                    f"manifest {copies}x",
                    run_job(["--job", "core", "--spec", f"manifest={m}", "--out", str(tmp / f"m{copies}"), *w]),
                )
            )
        server, env = start_prefect(tmp / "prefect")
        try:
            one = tmp / "one"
            one.mkdir()
            shutil.copy(sorted(a.corpus.rglob("*.wav"))[0], one)
            cards = ["--cards-index", str(tmp / "cards")]
            rows.append(
                (
                    "cli: start-up (one clip)",
                    "ravdess 1 clip",
                    timed_cli(
                        [
                            "build-dataset",
                            "--corpus",
                            f"ravdess={one}",
                            "--out",
                            str(tmp / "cli1"),
                            "--asr",
                            "none",
                            "--teacher",
                            "none",
                            *w,
                            *cards,
                        ],
                        env,
                    ),
                )
            )
            full = ["build-dataset", "--corpus", f"ravdess={a.corpus}", "--out", str(tmp / "cli"), "--asr", "none",
                    "--teacher", "none"]  # fmt: skip
            rows.append(("cli: build-dataset", "ravdess 1x", timed_cli([*full, *w, *cards], env)))
            rows.append(("cli: rerun, nothing changed", "ravdess 1x", timed_cli([*full, *w, *cards], env)))
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nmachine: {os.cpu_count()} cores, workers={a.workers}, corpus={a.corpus.name}")
    print("floor = a plain thread pool of as many workers: soundfile + soxr + the cue measurement per clip;")
    print("x floor = seconds / floor seconds for as many clips")
    print(f"{'stage':32s} {'workload':16s} {'seconds':>8s} {'clips/s':>8s} {'x floor':>8s} {'peak MiB':>9s}  notes")
    for stage, workload, r in rows:
        per_clip_floor = floor["seconds"] / floor["clips"]
        # a ratio per clip means nothing for the one-clip start-up run
        ratio = r["seconds"] / (per_clip_floor * r["clips"]) if r["clips"] > 1 else float("nan")
        notes = ", ".join(
            f"{k} {v:.2f}s" if isinstance(v, float) else f"{k} {v}"
            for k, v in r.items()
            if k in ("plan", "chunks", "finalize", "cached")
        )
        rate = r["clips"] / r["seconds"]
        print(f"{stage:32s} {workload:16s} {r['seconds']:8.2f} {rate:8.0f} {ratio:8.2f} {r['peak_mib']:9.0f}  {notes}")
    floor_rate = floor["clips"] / floor["seconds"]
    write_rows(a.rows, [Row("build", stage, f"{workload} ({r['clips']} clips)", r["clips"] / r["seconds"], floor_rate,
                            "clips/s", "read+resample+cues loop", r["peak_mib"])
                        for stage, workload, r in rows[1:] if r["clips"] > 1])  # fmt: skip


if __name__ == "__main__":
    main()
