"""The alignment stage alone, and how well what it learnt is heard: the measurement behind the `align` and
audio values of configs/train-offline.yaml; with `--sft`, SFT variants from that same alignment, the
measurement behind its `sft` values.

    .venv/bin/python bench/align_ravdess.py --work DIR [--config bench/configs/train-offline-experiment.yaml] \\
        [--set align.learning_rate=1e-3 --set model.summary_tokens=0 ...] \\
        [--sft --sft-set sft.projector=false --sft-set sft.align_replay=0.25 ...]

Runs train-pallm's alignment step (`steps.run_align`) on RAVDESS actors 1-16 into DIR/<label> (the build of
bench/train_ravdess.py in DIR/dataset, built unless present), then answers the alignment prompt greedily for
all 240 clips of actors 17-20 and prints sentiment and emotion UA with 95% intervals, the training time and
peak RSS. `--set` overrides a config value (dotted path, YAML value); each set of overrides gets its own
folder, so several can be compared and a rerun reuses what finished.

`--sft` then runs SFT (`steps.run_sft`) from that alignment in DIR/<label>/sft-<sft label>, with the
`--sft-set` overrides, and scores the labels of its understanding answers on the same clips (each answer
stopped once its labels are given, as the evaluation's swapped pass does). Variants of one alignment run side
by side as separate commands (one core each: OMP_NUM_THREADS=1) once the alignment has finished.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def with_overrides(cfg: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """The config with each `a.b=value` applied (value read as YAML)."""
    for item in sets:
        path, _, value = item.partition("=")
        *parents, key = path.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = yaml.safe_load(value)
    return cfg


def cache_frames(dataset: Path, cfg: Any, batch: int = 32) -> tuple[int, float]:
    """Encode every clip of `dataset` into the frozen encoder's frame cache once, with every core, before runs
    that read it (side-by-side runs would each encode them, one core apiece): the clips encoded and the minutes."""
    from pallm.model import frozen_encoder
    from pallm.train.collate import waveform
    from pallm.train.data import read_rows

    encode = frozen_encoder(cfg.model)
    if encode is None:
        return 0, 0.0
    began = time.perf_counter()
    audio = read_rows(dataset, None, ("audio",)).column("audio").to_pylist()
    for start in range(0, len(audio), batch):
        encode([waveform(a["bytes"]) for a in audio[start : start + batch]])
    return encode.encoded, (time.perf_counter() - began) / 60


def heard_scores(speech: Any, rows: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Sentiment and emotion scores of the labels in the model's greedy answers to the rows' prompts."""
    from pallm.train import evaluate
    from pallm.train.answer import SENTIMENTS, parse_understanding
    from pallm.train.metrics import score_groups

    texts = evaluate.generate(speech, rows, max_new_tokens=48, batch_size=48, labels_only=True)
    answers = []
    for r, text in zip(rows, texts, strict=True):
        parsed = parse_understanding(text, need_reasoning=False)  # the labels, whatever follows them
        answers.append({**r, "pred_sentiment": parsed and parsed.sentiment, "pred_emotion": parsed and parsed.emotion})
    emotions = sorted({r["emotion"] for r in rows if r["emotion"]})
    return {
        "sentiment": next(
            iter(score_groups(answers, "sentiment", "pred_sentiment", labels=SENTIMENTS, seed=seed).values())
        ),
        "emotion": next(iter(score_groups(answers, "emotion", "pred_emotion", labels=emotions, seed=seed).values())),
    }


def table_row(label: str, loss: list[float], scores: dict[str, Any], n: int, minutes: float) -> str:
    """One line of the printed table."""
    cells = [f"{s.ua:.3f} [{s.ua_ci[0]:.3f}, {s.ua_ci[1]:.3f}]" for s in (scores["sentiment"], scores["emotion"])]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return (f"| {label} | {len(loss)} | {loss[0]:.3f} → {loss[-1]:.3f} | {cells[0]} | {cells[1]} | {n} | "
            f"{minutes:.1f} min | {peak:.1f} GiB |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "bench/.cache/ravdess-train")
    ap.add_argument("--config", type=Path, default=ROOT / "bench/configs/train-offline-experiment.yaml")
    ap.add_argument("--build-config", type=Path, default=ROOT / "bench/configs/ravdess-speaker-independent.yaml")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a.b=value (YAML), repeatable")
    ap.add_argument("--sft", action="store_true", help="then SFT from the alignment, its labels scored")
    ap.add_argument("--sft-set", dest="sft_sets", action="append", default=[], help="an override of the SFT run")
    args = ap.parse_args()

    from pallm.train import steps
    from pallm.train.config import TrainConfig
    from pallm.train.data import align_examples, examples, read_rows
    from pallm.train.rewards import UNDERSTAND

    dataset = args.work / "dataset"
    if not (dataset / "manifest.json").is_file():
        build_cmd = [sys.executable, "-m", "pallm.cli", "build-dataset", "--config", str(args.build_config),
                     "--out", str(dataset), "--cards-index", str(args.work / "cards")]  # fmt: skip
        subprocess.run(build_cmd, check=True, cwd=ROOT)
    raw = with_overrides(yaml.safe_load(args.config.read_text(encoding="utf-8")), args.sets)
    cfg = TrainConfig.model_validate(raw)
    if cfg.align is None:
        sys.exit(f"{args.config} has no align block")
    encoded, minutes = cache_frames(dataset, cfg)
    if encoded:
        print(f"frames: {encoded} clips encoded in {minutes:.1f} min (cached for every later run)")
    label = "align-" + ("-".join(s.replace("=", "_") for s in args.sets) or "default")
    out = args.work / label
    steps.start_run(dataset, out, cfg)
    began = time.perf_counter()
    record = steps.run_align(dataset, out, cfg)
    trained = time.perf_counter() - began
    labels = {r["id"]: r for r in read_rows(dataset, cfg.eval.splits, ("id", "sentiment", "emotion")).to_pylist()}
    header = ["| setting | steps | loss first → last | sentiment UA [95% CI] | emotion UA [95% CI] | n | time | "
              "peak RSS |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    if not args.sft:
        speech = steps.build_for(dataset, steps.inference_model(cfg.model), out / "align" / "model",
                                 cfg.seed)  # fmt: skip
        rows = [{**e, **labels[e["id"]]} for e in align_examples(dataset, cfg.eval.splits, False, cfg.align.prompt)]
        loss = [e["loss"] for e in record["history"] if "loss" in e]
        print("\n".join([*header, table_row(label, loss, heard_scores(speech, rows, cfg.seed), len(rows),
                                            trained / 60)]))  # fmt: skip
        return
    sft_cfg = TrainConfig.model_validate(with_overrides(raw, args.sft_sets))
    sft_out = out / ("sft-" + ("-".join(s.replace("=", "_") for s in args.sft_sets) or "default"))
    steps.start_run(dataset, sft_out, sft_cfg)
    if not (sft_out / "align").exists():
        (sft_out / "align").symlink_to((out / "align").resolve(), target_is_directory=True)
    began = time.perf_counter()
    record = steps.run_sft(dataset, sft_out, sft_cfg)
    trained = time.perf_counter() - began
    speech = steps.build_for(dataset, steps.inference_model(sft_cfg.model), sft_out / "sft" / "model",
                             sft_cfg.seed)  # fmt: skip
    rows = [e for e in examples(dataset, 0.5, sft_cfg.seed, sft_cfg.eval.splits) if e["task"] == UNDERSTAND]
    loss = [e["loss"] for e in record["history"] if "loss" in e]
    print("\n".join([*header, table_row(f"{label} / {sft_out.name}", loss, heard_scores(speech, rows, cfg.seed),
                                        len(rows), trained / 60)]))  # fmt: skip


if __name__ == "__main__":
    main()
