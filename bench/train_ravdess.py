"""The training experiment: the offline backbone on real RAVDESS, speaker-independent (actors 1-16 train,
17-20 select): words-only, the acoustic and encoder-probe baselines, and the model before SFT, after SFT and
after SFT + RL, each with 95% intervals and (models) with swapped audio.

    .venv/bin/python bench/train_ravdess.py --config bench/configs/train-offline-experiment.yaml \
        --publish bench/results/ravdess-offline

Builds the dataset (bench/configs/ravdess-speaker-independent.yaml) unless it exists, runs `pallm train`
(resumable: rerun after an interruption), prints the report's headline (UA with intervals, UA with swapped
audio, the reply margin, chance, the verdict) and its paired changes, wall time and peak memory, and copies
the report and its plots to `--publish`. On two CPU cores the build takes about 10 minutes, the experiment's
configuration about 40 (an SFT step of 8 examples 13-24 s, a GRPO step about 25 s) and the full
`configs/train-offline.yaml` several hours. The published result: bench/results/ravdess-offline/README.md.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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

    # The report's headline (UA with intervals, swapped audio, baselines, the verdict) and its paired changes.
    report = (out / "report.md").read_text(encoding="utf-8")
    print("\n" + report[report.index("## Headline") : report.index("## Sentiment")].strip() + "\n")
    print(f"\nwall time: {', '.join(f'{k} {v / 60:.1f} min' for k, v in times.items())}; peak RSS {peak:.0f} MiB")
    if args.publish:
        args.publish.mkdir(parents=True, exist_ok=True)
        for f in ("report.md", "sft_loss.png", "rl_rewards.png", "rl_kl.png"):
            if (out / f).is_file():
                shutil.copy(out / f, args.publish / f)  # the report links its plots by these names
        print(f"report copied to {args.publish}")


if __name__ == "__main__":
    main()
