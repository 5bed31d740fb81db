"""The training experiment: the offline backbone on real RAVDESS, speaker-independent (actors 1-16 train,
17-20 select), words-only vs before SFT vs after SFT vs after SFT + RL.

    .venv/bin/python bench/train_ravdess.py --config bench/configs/train-offline-experiment.yaml \
        --publish bench/results/ravdess-offline

Builds the dataset (bench/configs/ravdess-speaker-independent.yaml) unless it exists, runs `pallm train`
(resumable: rerun after an interruption), prints a table of WA / UA / macro-F1 for sentiment and emotion with
the change from SFT to RL, the reply margin, wall time and peak memory, and copies the report and its plots
to `--publish`. On two CPU cores the build takes about 10 minutes, the experiment's configuration about 40
(an SFT step of 8 examples 13-24 s, a GRPO step about 25 s) and the full `configs/train-offline.yaml` several
hours. The published result: bench/results/ravdess-offline/README.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("words-only", "before-sft", "after-sft", "after-rl")


def run(cmd: list[str]) -> float:
    """Run a command, streaming its output; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-config", type=Path, default=ROOT / "bench/configs/ravdess-speaker-independent.yaml")
    ap.add_argument("--config", type=Path, default=ROOT / "configs/train-offline.yaml")
    ap.add_argument("--work", type=Path, default=ROOT / "bench/.cache/ravdess-train")
    ap.add_argument("--publish", type=Path, default=None, help="folder to copy the report and plots into")
    args = ap.parse_args()
    pallm = [sys.executable, "-m", "pallm.cli"]
    dataset, out = args.work / "dataset", args.work / "run"
    times = {}
    if not (dataset / "manifest.json").is_file():
        times["build"] = run([*pallm, "build-dataset", "--config", str(args.build_config), "--out", str(dataset),
                              "--cards-index", str(args.work / "cards")])  # fmt: skip
    times["train"] = run([*pallm, "train", "--dataset", str(dataset), "--out", str(out), "--config", str(args.config)])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    metrics = {s: json.loads((out / "eval" / f"{s}.json").read_text()) for s in SYSTEMS}
    group = next(iter(metrics["after-rl"]["sentiment"]))
    print(f"\n{group}: speaker-independent ({args.config.name})\n")
    print("| system | sent. WA | sent. UA | sent. F1 | emo. WA | emo. UA | emo. F1 | reply margin |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in SYSTEMS:
        m, e = metrics[s]["sentiment"][group], metrics[s]["emotion"][group]
        margin = metrics[s]["reply"].get(group, {}).get("margin", float("nan"))
        print(f"| {s} | {m['wa']:.3f} | {m['ua']:.3f} | {m['macro_f1']:.3f} | {e['wa']:.3f} | {e['ua']:.3f} | "
              f"{e['macro_f1']:.3f} | {margin:+.3f} |")  # fmt: skip
    sft, rl = metrics["after-sft"], metrics["after-rl"]
    for task in ("sentiment", "emotion"):
        d = rl[task][group]["ua"] - sft[task][group]["ua"]
        print(f"RL - SFT, {task} UA: {d:+.3f} ({d / max(sft[task][group]['ua'], 1e-9):+.1%} relative)")
    print(f"\nwall time: {', '.join(f'{k} {v / 60:.1f} min' for k, v in times.items())}; peak RSS {peak:.0f} MiB")
    if args.publish:
        args.publish.mkdir(parents=True, exist_ok=True)
        for f in ("report.md", "sft_loss.png", "rl_rewards.png", "rl_kl.png"):
            if (out / f).is_file():
                shutil.copy(out / f, args.publish / f)  # the report links its plots by these names
        print(f"report copied to {args.publish}")


if __name__ == "__main__":
    main()
