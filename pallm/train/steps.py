"""The steps of a training run, as plain functions over a run folder; `flows/train_pallm.py` sequences them.

    OUT/config.json            the configuration (a rerun with another one is refused)
    OUT/base/model/            the initial model, when it is built with random weights (pretrained: its source)
    OUT/sft/model/             the model after SFT (full weights, processor)     + checkpoint-N/ while training
    OUT/rl/model/              the model after SFT + RL                          + checkpoint-N/ while training
    OUT/eval/<system>.json     metrics of words-only, before-sft, after-sft, after-rl; answers beside them
    OUT/report.md, plots, README.md (the model card)

Every step is skipped when its output is complete (`done.json`), and a trainer resumes from its last
checkpoint, so a rerun after a crash continues where the run stopped.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from pallm.shards import write_json_atomic
from pallm.train.checkpoints import finished, last_checkpoint, mark_finished
from pallm.train.config import TrainConfig
from pallm.train.data import examples

SYSTEMS = ("words-only", "before-sft", "after-sft", "after-rl")
CONFIG_FILE = "config.json"


def start_run(dataset: Path, out: Path, cfg: TrainConfig) -> None:
    """Create the run folder, or check that an existing one was started with the same dataset and config."""
    if not (dataset / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{dataset} is not a built dataset (no manifest.json); build one with pallm build-dataset"
        )
    record = {
        "dataset": str(dataset.resolve()),
        "fingerprint": cfg.fingerprint(),
        "config": cfg.model_dump(mode="json"),
    }
    path = out / CONFIG_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if (old["dataset"], old["fingerprint"]) != (record["dataset"], record["fingerprint"]):
            raise ValueError(
                f"{out} holds a run of another dataset or configuration ({old['dataset']}, {old['fingerprint']}); "
                "give a new --out, or delete the folder to start over"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1), encoding="utf-8")


def train_examples(dataset: Path, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The mixed-task training examples of the configured splits."""
    rows = examples(dataset, cfg.understand_share, cfg.seed, cfg.train_splits)
    if not rows:
        raise ValueError(f"no training examples in splits {cfg.train_splits} of {dataset}")
    return rows


def eval_examples(dataset: Path, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Both tasks of every row of the evaluation splits, or of a seeded random sample of `eval.limit` rows per
    split (not the first ones: ids sort by label in some corpora, RAVDESS among them)."""
    rows = examples(dataset, 0.5, cfg.seed, cfg.eval.splits)
    if cfg.eval.limit is None:
        return rows
    ids: dict[str, list[str]] = {}
    for r in rows:
        ids.setdefault(r["split"], []).append(r["id"])
    rng = random.Random(cfg.seed)
    keep = {
        i
        for split_ids in ids.values()
        for i in rng.sample(sorted(set(split_ids)), min(cfg.eval.limit, len(set(split_ids))))
    }
    return [r for r in rows if r["id"] in keep]


def stage_model(out: Path, stage: str) -> Path:
    return out / stage / "model"


def initial_model(out: Path, cfg: TrainConfig) -> Path | None:
    """Where the model before training loads from: a random-weight build is made once and saved in OUT/base
    (SFT and the before-SFT evaluation then start from the very same weights); None for a pretrained source."""
    from pallm.model import build

    if cfg.model.source is not None:
        return None
    stage = out / "base"
    if not finished(stage):
        build(cfg.model.model_copy(update={"lora": None}), seed=cfg.seed).save(stage_model(out, "base"))
        mark_finished(stage, {"size": cfg.model.size, "seed": cfg.seed})
    return stage_model(out, "base")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch(stage: str, dataset: Path, out: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Run a training stage in `cfg.processes` data-parallel processes (`accelerate launch`), then read its record.
    The processes read the configuration the run folder recorded (`pallm.train.launch`)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.processes),
           "-m", "pallm.train.launch", stage, str(dataset), str(out)]  # fmt: skip
    subprocess.run(cmd, check=True)
    record = finished(out / stage)
    if record is None:
        raise RuntimeError(f"accelerate launch of {stage} ended without finishing the stage")
    return record


def _finish(speech: Any, stage: Path, resumed: str | None, history: list[dict]) -> dict[str, Any]:
    """Save the stage's model and mark it finished (the first process only, the others wait for it)."""
    record = {"resumed_from": Path(resumed).name if resumed else None, "history": history}
    if _rank() == 0:
        speech.save(stage / "model")
        mark_finished(stage, record)
    if _launched():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
    return record


def run_sft(dataset: Path, out: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Stage 1 (skipped when done): SFT from the initial model; the result in OUT/sft/model."""
    from pallm.model import build
    from pallm.train.sft import train_sft

    stage = out / "sft"
    if done := finished(stage):
        return done
    base = initial_model(out, cfg)
    if cfg.processes > 1 and not _launched():
        return launch("sft", dataset, out, cfg)
    speech = build(cfg.model, checkpoint=base, seed=cfg.seed)
    resumed = last_checkpoint(stage)
    history = train_sft(speech, train_examples(dataset, cfg), cfg.sft, stage, cfg.seed,
                        cfg.model.gradient_checkpointing)  # fmt: skip
    return _finish(speech, stage, resumed, history)


def reward_functions(cfg: TrainConfig) -> dict[str, Any]:
    """The rewards of the RL stage by name; the reply reward is the judge or the offline similarity."""
    from pallm.train import rewards

    funcs: dict[str, Any] = {
        "correctness": rewards.correctness_reward,
        "format": rewards.format_reward,
        "grounding": rewards.grounding_reward,
    }
    if cfg.rl.reward_weights.get("reply", 0):
        if cfg.rl.reply_reward == "judge":
            if not cfg.rl.judge_model:
                raise ValueError("rl.reply_reward judge needs rl.judge_model (and rl.judge_base_url)")
            funcs["reply"] = rewards.JudgeReward(cfg.rl.judge_base_url, cfg.rl.judge_model)
        else:
            funcs["reply"] = rewards.ReplySimilarityReward(Path(cfg.rl.embedder) if cfg.rl.embedder else None)
    return funcs


def run_rl(dataset: Path, out: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Stage 2 (skipped when done): multi-task GRPO from the SFT model; the result in OUT/rl/model."""
    from pallm.model import build
    from pallm.train.grpo import train_grpo

    stage = out / "rl"
    if done := finished(stage):
        return done
    if not finished(out / "sft"):
        raise RuntimeError("RL starts from the SFT model: run SFT first")
    if cfg.processes > 1 and not _launched():
        return launch("rl", dataset, out, cfg)
    speech = build(cfg.model, checkpoint=stage_model(out, "sft"), seed=cfg.seed)
    resumed = last_checkpoint(stage)
    history = train_grpo(speech, train_examples(dataset, cfg), reward_functions(cfg), cfg.rl, stage, cfg.seed,
                         cfg.model.gradient_checkpointing)  # fmt: skip
    return _finish(speech, stage, resumed, history)


def run_eval(dataset: Path, out: Path, cfg: TrainConfig, system: str) -> dict[str, Any]:
    """Evaluate one system (skipped when done): metrics in OUT/eval/<system>.json, answers in <system>.jsonl."""
    from pallm.train import evaluate
    from pallm.train.rewards import ReplySimilarityReward

    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; one of {SYSTEMS}")
    path = out / "eval" / f"{system}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    rows = eval_examples(dataset, cfg)
    if system == "words-only":
        answers = evaluate.words_only_rows(rows)
    else:
        from pallm.model import build

        checkpoint = {"before-sft": initial_model(out, cfg), "after-sft": stage_model(out, "sft"),
                      "after-rl": stage_model(out, "rl")}  # fmt: skip
        speech = build(cfg.model.model_copy(update={"lora": None}), checkpoint=checkpoint[system], seed=cfg.seed)
        texts = evaluate.generate(speech, rows, cfg.eval.max_new_tokens, cfg.eval.batch_size)
        answers = evaluate.answer_rows(rows, texts)
    embedder = Path(cfg.rl.embedder) if cfg.rl.embedder else None
    metrics = {"system": system, **evaluate.score_rows(answers, ReplySimilarityReward(embedder))}
    path.parent.mkdir(parents=True, exist_ok=True)
    with (out / "eval" / f"{system}.jsonl").open("w", encoding="utf-8") as f:
        for a in answers:
            f.write(json.dumps(a) + "\n")
    write_json_atomic(path, metrics)
    return metrics
