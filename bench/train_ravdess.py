"""The training experiment: the offline backbone on real RAVDESS, speaker-independent (actors 1-16 train,
17-20 select, all 240 clips scored), in several seeds: words-only, the acoustic and encoder-probe baselines,
and the model after SFT and after SFT + RL, each with 95% intervals and (models) with swapped audio.

    .venv/bin/python bench/train_ravdess.py --config bench/configs/train-offline-experiment.yaml --work DIR \\
        [--seeds 2] [--publish bench/results/ravdess-offline]

Builds the dataset into DIR/dataset (bench/configs/ravdess-speaker-independent.yaml) unless it exists, encodes
its clips into the frozen encoder's frame cache with every core (once; like the build, outside the runs' time), then
runs `pallm train` once per seed (the config's seed, then the next ones): the first seed's run in DIR/run,
the others in DIR/run-seed<N>. The seeds run side by side, the cores shared out between them (`--sequential`
runs them one after another): on two cores a greedy answer costs 0.66 s with two threads and 0.88 s with one,
so two one-thread runs answer 1.5 times as fast as two two-thread runs in turn. Every run is resumable: rerun
the same command after an interruption. Prints, and writes to DIR/summary.md, one table of every seed's
headline (UA with intervals, UA with swapped audio), the RL change with its paired interval per seed, the
wall time and each run's peak RSS; `--publish` copies the summary and the first seed's report and plots. The
table also scores each seed's aligned model (its labels, answering the alignment prompt; after the runs, outside
their wall time), so it shows what SFT started from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ("align_loss.png", "sft_loss.png", "rl_rewards.png", "rl_kl.png")


def run_dir(work: Path, k: int, seed: int) -> Path:
    return work / "run" if k == 0 else work / f"run-seed{seed}"


def start(cmd: list[str], threads: int, log: Path, prefect_home: Path) -> subprocess.Popen:
    """A child with `threads` compute threads and its own embedded Prefect server (side-by-side runs would share
    one SQLite database otherwise), its output in `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PREFECT_HOME": str(prefect_home)}  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen) -> tuple[int, float]:
    """Its exit status and peak RSS in MiB (of the child and what it waited for)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


def _ua(m: dict[str, Any], task: str, group: str) -> str:
    s = m.get(task, {}).get(group)
    if not s:
        return "–"
    ci = s.get("ua_ci")
    return f"{s['ua']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{s['ua']:.3f}"


def heard_after_alignment(run: Path) -> dict[str, Any]:
    """The aligned model's sentiment and emotion UA (with intervals) on the run's evaluation splits, answering
    the alignment prompt (`align_ravdess.heard_scores`), kept in RUN/align/heard.json: what SFT starts from."""
    from align_ravdess import heard_scores  # bench/ is on the path of a bench script

    from pallm.train.config import TrainConfig
    from pallm.train.data import align_examples, read_rows
    from pallm.train.steps import build_for, inference_model

    path = run / "align" / "heard.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    record = json.loads((run / "config.json").read_text(encoding="utf-8"))
    cfg, dataset = TrainConfig.model_validate(record["config"]), Path(record["dataset"])
    speech = build_for(dataset, inference_model(cfg.model), run / "align" / "model", cfg.seed)
    labels = {r["id"]: r for r in read_rows(dataset, cfg.eval.splits, ("id", "sentiment", "emotion")).to_pylist()}
    rows = [{**e, **labels[e["id"]]} for e in align_examples(dataset, cfg.eval.splits, False, cfg.align.prompt)]
    scores = heard_scores(speech, rows, cfg.seed)
    heard = {t: {"ua": s.ua, "ua_ci": list(s.ua_ci), "n": len(rows)} for t, s in scores.items()}
    path.write_text(json.dumps(heard, indent=1), encoding="utf-8")
    return heard


def summary(runs: dict[int, Path], times: dict[int, float], peaks: dict[int, float], total: float) -> list[str]:
    """The experiment's table: every system of every seed, the RL changes, time and memory."""
    from pallm.train.checkpoints import finished
    from pallm.train.report import load_metrics, stage_lines

    lines = ["| seed | system | n | sentiment UA [95% CI] | emotion UA [95% CI] | swapped audio (sent. / emo.) |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    changes: list[str] = []
    training: list[str] = []
    for seed, run in runs.items():
        if (run / "align" / "model").is_dir():
            heard = {t: {"all": m} for t, m in heard_after_alignment(run).items()}
            lines.append(f"| {seed} | after alignment | {heard['sentiment']['all']['n']} | "
                         f"{_ua(heard, 'sentiment', 'all')} | {_ua(heard, 'emotion', 'all')} | – |")  # fmt: skip
        for system, m in load_metrics(run / "eval").items():
            if "not_applicable" in m:
                continue
            for group in sorted(m.get("sentiment", {})):
                sw = m.get("swapped")
                swapped = " / ".join(f"{sw[t][group]['ua']:.3f}" for t in ("sentiment", "emotion")) if sw else "–"
                n = m["sentiment"][group]["n"]
                lines.append(f"| {seed} | {system} | {n} | {_ua(m, 'sentiment', group)} | "
                             f"{_ua(m, 'emotion', group)} | {swapped} |")  # fmt: skip
        for c in json.loads((run / "eval" / "changes.json").read_text(encoding="utf-8")):
            if c["change"] in ("RL", "after-sft − acoustic") and c["metric"] == "ua":
                changes.append(f"| {seed} | {c['change']} | {c['task']} | {c['group']} | {c['delta']:+.3f} "
                               f"[{c['low']:+.3f}, {c['high']:+.3f}] | {'yes' if c['real'] else 'no'} |")  # fmt: skip
        stages = [finished(run / s) or {} for s in ("align", "sft", "rl")]
        training += [f"seed {seed}:", "", *stage_lines(*stages), ""]
    out = [*lines, "", "| seed | change | task | group | Δ UA [95% CI] | real |",
           "| --- | --- | --- | --- | --- | --- |", *changes, "", *training]  # fmt: skip
    out.append("Wall time (training and evaluation, the build excluded): "
               + ", ".join(f"seed {s} {t / 60:.1f} min" for s, t in times.items())
               + f"; all seeds {total / 60:.1f} min. Peak RSS: "
               + ", ".join(f"seed {s} {p / 1024:.1f} GiB" for s, p in peaks.items()) + ".")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-config", type=Path, default=ROOT / "bench/configs/ravdess-speaker-independent.yaml")
    ap.add_argument("--config", type=Path, default=ROOT / "bench/configs/train-offline-experiment.yaml")
    ap.add_argument("--work", type=Path, default=ROOT / "bench/.cache/ravdess-train")
    ap.add_argument("--seeds", type=int, default=2, help="runs, from the config's seed up")
    ap.add_argument("--sequential", action="store_true", help="one run after another, each with every core")
    ap.add_argument("--publish", type=Path, default=None, help="folder to copy the summary, report and plots into")
    args = ap.parse_args()
    pallm = [sys.executable, "-m", "pallm.cli"]
    work = args.work.resolve()
    dataset = work / "dataset"
    work.mkdir(parents=True, exist_ok=True)
    if not (dataset / "manifest.json").is_file():
        build = [*pallm, "build-dataset", "--config", str(args.build_config), "--out", str(dataset),
                 "--cards-index", str(work / "cards")]  # fmt: skip
        began = time.perf_counter()
        subprocess.run(build, check=True, cwd=ROOT)
        print(f"build: {(time.perf_counter() - began) / 60:.1f} min")

    base = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    from align_ravdess import cache_frames  # bench/ is on the path of a bench script

    from pallm.train.config import TrainConfig

    encoded, minutes = cache_frames(dataset, TrainConfig.model_validate(base))
    if encoded:
        print(f"frames: {encoded} clips encoded in {minutes:.1f} min, before the runs (cached; not in their time)")
    seeds = [int(base.get("seed", 0)) + k for k in range(args.seeds)]
    runs = {seed: run_dir(work, k, seed) for k, seed in enumerate(seeds)}
    cores = os.cpu_count() or 1
    threads = cores if args.sequential else max(1, cores // len(seeds))
    commands = {}
    for seed, run in runs.items():
        config = work / f"config-seed{seed}.yaml"
        config.write_text(yaml.safe_dump({**base, "seed": seed}), encoding="utf-8")
        commands[seed] = [*pallm, "train", "--dataset", str(dataset), "--out", str(run), "--config", str(config)]
    times: dict[int, float] = {}
    peaks: dict[int, float] = {}
    began = time.perf_counter()
    batches = [[s] for s in seeds] if args.sequential else [seeds]
    for batch in batches:
        procs = {s: (start(commands[s], threads, work / f"train-seed{s}.log", work / f"prefect-seed{s}"),
                     time.perf_counter()) for s in batch}  # fmt: skip
        for s, (proc, t0) in procs.items():
            code, peaks[s] = wait(proc)
            times[s] = time.perf_counter() - t0
            if code:
                sys.exit(f"seed {s} failed (exit {code}); its log: {work / f'train-seed{s}.log'}")
    total = time.perf_counter() - began

    lines = [f"# {base.get('name', 'experiment')}: {len(seeds)} seeds", "", *summary(runs, times, peaks, total)]
    text = "\n".join(lines) + "\n"
    (work / "summary.md").write_text(text, encoding="utf-8")
    print(text)
    if args.publish:
        args.publish.mkdir(parents=True, exist_ok=True)
        first = runs[seeds[0]]
        shutil.copy(work / "summary.md", args.publish / "summary.md")
        for f in ("report.md", *PLOTS):
            if (first / f).is_file():
                shutil.copy(first / f, args.publish / f)  # the report links its plots by these names
        print(f"summary, report and plots copied to {args.publish}")


if __name__ == "__main__":
    main()
