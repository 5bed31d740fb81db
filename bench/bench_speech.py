"""Benchmark of the speech stage against the `whisperx` command-line tool on the same RAVDESS clips.

    .venv/bin/python bench/bench_speech.py [--corpus ../shared/corpora/ravdess16k] [--clips 1200] [--model tiny.en]

Both sides use the same Whisper weights (the packaged CTranslate2 folder), compute type, beam size,
language, VAD and thread count, and load the model once for all clips. The reference runs
`whisperx FILES... --no_align` (word alignment would need a wav2vec2 model from the hub); ours also
times every word with Whisper's cross-attention. Ours runs twice: with the stage's own decoder layout
(on CPU one single-threaded decoder per thread) and with whisperx's (one decoder on every thread,
batches of 8), to show what each part gains. Then the cue stage runs over the same clips with those
words, to show it is not the bottleneck. Each measurement runs in its own subprocess, so its peak
memory (max RSS) is its own. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import Row, add_rows_option, write_rows  # run as a script, bench/ is on the path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "ravdess16k"


def pick(corpus: Path, n: int) -> list[Path]:
    """`n` clips spread evenly over the corpus (every actor and emotion when n allows)."""
    files = sorted(corpus.rglob("*.wav"))
    step = max(1, len(files) // n)
    return files[::step][:n]


def job_ours(files: list[Path], model: str, compute_type: str, threads: int, whisperx_layout: bool) -> dict:
    """Load once, transcribe every clip, then measure the cues with the words."""
    import soundfile as sf

    from pallm.audio.cues import measure
    from pallm.config import SpeechConfig
    from pallm.speech.stage import speech_stage
    from pallm.speech.transcribe import load_transcriber

    t0 = time.perf_counter()
    config = SpeechConfig(compute_type=compute_type, threads=threads)
    if whisperx_layout:
        config = config.model_copy(update={"decoders": 1, "batch_size": 8})
    tr = load_transcriber(model, config)
    t1 = time.perf_counter()
    audio = [sf.read(f, dtype="float32")[0] for f in files]
    out = []
    rows = speech_stage(model, config).batch_size  # as the pipeline does: this many rows at a time
    for first in range(0, len(audio), rows):
        out += tr.transcribe(audio[first : first + rows])
    t2 = time.perf_counter()
    for x, t in zip(audio, out, strict=True):
        measure(x, 16_000, list(t.words) or None)
    t3 = time.perf_counter()
    words = sum(len(t.words) for t in out)
    decoders, each, batch = config.decoding()
    layout = f"{decoders} decoder{'s' * (decoders > 1)} x {each} thread{'s' * (each > 1)}, batch {batch}"
    return {"seconds": t2 - t0, "load": t1 - t0, "cues": t3 - t2, "clips": len(files), "words": words, "layout": layout}


def job_cli(files: list[Path], model: str, compute_type: str, threads: int) -> dict:
    """The `whisperx` command on the same files, model folder and settings."""
    exe = Path(sys.executable).parent / "whisperx"
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(exe), *map(str, files), "--model", model, "--device", "cpu", "--compute_type", compute_type,
               "--language", "en", "--no_align", "--threads", str(threads), "--batch_size", "8",
               "--beam_size", "5", "--vad_method", "pyannote", "--output_format", "json", "--output_dir", out,
               "--verbose", "False", "--log-level", "error"]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"whisperx failed:\n{proc.stderr[-3000:]}")
        done = len(list(Path(out).glob("*.json")))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "clips": done, "peak_child_mib": peak}


def run_job(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--clips", type=int, default=1200)
    ap.add_argument("--model", default="tiny.en", help="tiny.en or base (packaged) or a CTranslate2 folder")
    ap.add_argument("--compute-type", default="int8")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--job", choices=("cli", "ours", "ours-whisperx-layout"), help=argparse.SUPPRESS)
    add_rows_option(ap)
    a = ap.parse_args()
    if not a.corpus.is_dir():
        sys.exit(f"corpus {a.corpus} not found: pass --corpus DIR (the RAVDESS clips)")
    files = pick(a.corpus, a.clips)
    from pallm.speech.models import resolve_asr_model

    folder = resolve_asr_model(a.model)
    settings = (files, folder, a.compute_type, a.threads)
    if a.job:
        result = job_cli(*settings) if a.job == "cli" else job_ours(*settings, a.job == "ours-whisperx-layout")
        self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result | {"peak_mib": max(self_peak, result.pop("peak_child_mib", 0.0))}))
        return
    common = ["--corpus", str(a.corpus), "--clips", str(a.clips), "--model", a.model, "--compute-type",
              a.compute_type, "--threads", str(a.threads)]  # fmt: skip
    cli = run_job(["--job", "cli", *common])
    ours = run_job(["--job", "ours", *common])
    as_whisperx = run_job(["--job", "ours-whisperx-layout", *common])
    print(f"\nmachine: {os.cpu_count()} cores; model {a.model} ({a.compute_type}), beam 5, threads {a.threads}; "
          f"{len(files)} RAVDESS clips; each loads the model once")  # fmt: skip
    print(f"{'stage':44s} {'seconds':>8s} {'clips/s':>8s} {'x whisperx':>10s} {'peak MiB':>9s}  notes")
    rows = [
        ("reference: whisperx CLI (--no_align)", cli, f"1 decoder x {a.threads} threads, one file at a time"),
        ("ours: speech stage (+ word timing)", ours,
         f"{ours['layout']}; model load {ours['load']:.1f}s, {ours['words']} words"),
        ("ours, whisperx's decoder layout", as_whisperx, as_whisperx["layout"]),
    ]  # fmt: skip
    for name, r, notes in rows:
        speedup = cli["seconds"] / r["seconds"] * r["clips"] / cli["clips"]
        print(f"{name:44s} {r['seconds']:8.1f} {r['clips'] / r['seconds']:8.2f} {speedup:10.2f} {r['peak_mib']:9.0f}  "
              f"{notes}")  # fmt: skip
    share = 100 * ours["cues"] / ours["seconds"]
    print(f"{'ours: cue stage on the same clips':44s} {ours['cues']:8.1f} {ours['clips'] / ours['cues']:8.2f} "
          f"{'':>10s} {'':>9s}  {share:.1f}% of the speech stage's time (target < 20%)")  # fmt: skip
    workload = f"{ours['clips']} clips, {a.model} {a.compute_type}"
    rates = ours["clips"] / ours["seconds"], cli["clips"] / cli["seconds"]
    write_rows(a.rows, [Row("speech", "speech stage (+ word timing)", workload, *rates, "clips/s", "whisperx CLI",
                            ours["peak_mib"])])  # fmt: skip


if __name__ == "__main__":
    main()
