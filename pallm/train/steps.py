"""The steps of a training run, as plain functions over a run folder; `flows/train_pallm.py` sequences them.

    OUT/config.json            the configuration (a rerun with another one is refused)
    OUT/base/model/            the initial model, when it is built with random weights (pretrained: its source)
    OUT/align/model/           the model after the alignment stage, when configured  + checkpoint-N/ while training
    OUT/sft/model/             the model after SFT (full weights, processor)     + checkpoint-N/ while training
    OUT/rl/model/              the model after SFT + RL                          + checkpoint-N/ while training
    OUT/eval/<system>.json     metrics of words-only, acoustic, encoder-probe, before-sft, after-sft, after-rl;
                               answers beside them (<system>.jsonl, and <system>.swapped.jsonl for models)
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

from pallm.dataset import read_manifest
from pallm.shards import write_bytes_atomic, write_json_atomic
from pallm.train.checkpoints import finished, last_checkpoint, mark_finished
from pallm.train.config import ModelConfig, TrainConfig
from pallm.train.data import examples, read_rows

REFERENCES = ("words-only", "acoustic", "encoder-probe")  # what the model is measured against
MODELS = ("before-sft", "after-sft", "after-rl")  # the model at each point of training
SYSTEMS = (*REFERENCES, *MODELS)
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


def sft_examples(dataset: Path, cfg: TrainConfig) -> list[dict[str, Any]]:
    """SFT's mix: `train_examples`, plus the alignment's examples drawn (seeded) to make up `sft.align_replay` of
    it, so SFT keeps rehearsing what the alignment taught."""
    from pallm.train.data import align_examples

    rows = train_examples(dataset, cfg)
    share = cfg.sft.align_replay
    if not share:
        return rows
    if cfg.align is None:
        raise ValueError("sft.align_replay replays the alignment's examples: configure an align stage")
    heard = align_examples(dataset, cfg.train_splits, cfg.align.target == "cues+labels", cfg.align.prompt)
    wanted = round(len(rows) * share / (1 - share))
    rng = random.Random(cfg.seed)
    replay = [rng.choice(heard) for _ in range(wanted)] if wanted > len(heard) else rng.sample(heard, wanted)
    return rows + [{**r, "task": "align"} for r in replay]


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


def _finish(
    speech: Any, stage: Path, resumed: str | None, history: list[dict], dataset: Path, **extra: Any
) -> dict[str, Any]:
    """Save the stage's model, with the labels its prompt offers (`pallm listen` asks the same), and mark it
    finished (the first process only, the others wait for it)."""
    from pallm.train.data import LABELS_FILE, emotion_labels

    record = {"resumed_from": Path(resumed).name if resumed else None, "history": history, **extra}
    if _rank() == 0:
        speech.save(stage / "model")
        write_json_atomic(stage / "model" / LABELS_FILE, {"emotions": emotion_labels(dataset)})
        mark_finished(stage, record)
    if _launched():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
    return record


def inference_model(cfg: ModelConfig) -> ModelConfig:
    """The config a saved stage is loaded with to answer: merged already (no LoRA to add), and in bfloat16 where
    it trains in mixed precision (greedy answers then run about twice as fast on a bf16 CPU)."""
    update: dict[str, Any] = {"lora": None}
    if cfg.mixed_precision == "bf16":
        update["dtype"] = "bfloat16"
    return cfg.model_copy(update=update)


def build_for(dataset: Path, model_cfg: ModelConfig, checkpoint: Path | None, seed: int) -> Any:
    """The speech LLM of `model_cfg` from `checkpoint`, ready to hear `dataset`: where the model standardises its
    frames per speaker, its processor gets every speaker's statistics over all the dataset's clips (no labels)."""
    from pallm.model import build
    from pallm.model.offline import fit_speakers
    from pallm.train.collate import waveform

    speech = build(model_cfg, checkpoint=checkpoint, seed=seed)
    if getattr(speech.processor, "speaker_norm", False):
        rows = read_rows(dataset, None, ("speaker_id", "audio")).to_pylist()
        fit_speakers(speech, ((r["speaker_id"], waveform(r["audio"]["bytes"])) for r in rows))
    return speech


def _in_projector(name: str) -> bool:
    """Whether a parameter belongs to the projector that trains: the offline backbone's `projector`, Qwen2-Audio's
    `multi_modal_projector`; peft keeps an unused copy of a module it trains in full (`original_module`)."""
    parts = name.split(".")
    return any(part.endswith("projector") for part in parts) and "original_module" not in parts


def freeze_for_alignment(model: Any, lora: bool) -> int:
    """Leave trainable only the projector (and the LoRA adapters, with `lora`); the number of parameters that
    train."""
    trains = 0
    for name, p in model.named_parameters():
        p.requires_grad = _in_projector(name) or (lora and "lora_" in name)
        trains += p.numel() if p.requires_grad else 0
    if not trains:
        raise ValueError("the model has no projector to align")
    return trains


def freeze_projector(model: Any) -> int:
    """Freeze the projector (SFT keeps what the alignment learnt); the number of parameters frozen."""
    frozen = 0
    for name, p in model.named_parameters():
        if _in_projector(name) and p.requires_grad:
            p.requires_grad = False
            frozen += p.numel()
    if not frozen:
        raise ValueError("the model has no trainable projector to freeze")
    return frozen


def run_align(dataset: Path, out: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The alignment stage (skipped when done, None when not configured): from the initial model, the decoder
    frozen, on `data.align_examples` of the training splits; the result in OUT/align/model."""
    from pallm.train.data import align_examples
    from pallm.train.sft import train_sft

    if cfg.align is None:
        return None
    stage = out / "align"
    if done := finished(stage):
        return done
    base = initial_model(out, cfg)
    if cfg.processes > 1 and not _launched():
        return launch("align", dataset, out, cfg)
    model_cfg = cfg.model if cfg.align.lora else cfg.model.model_copy(update={"lora": None})
    speech = build_for(dataset, model_cfg, base, cfg.seed)
    trains = freeze_for_alignment(speech.model, cfg.align.lora)
    rows = align_examples(dataset, cfg.train_splits, cfg.align.target == "cues+labels", cfg.align.prompt)
    if not rows:
        raise ValueError(f"no labelled rows to align on in splits {cfg.train_splits} of {dataset}")
    if speech.family == "offline":
        from pallm.model.offline import fit_summary_scaler
        from pallm.train.collate import waveform

        fit_summary_scaler(speech, [waveform(r["audio"]) for r in rows])
    resumed = last_checkpoint(stage)
    history = train_sft(speech, rows, cfg.align, stage, cfg.seed, cfg.model.gradient_checkpointing)
    return _finish(speech, stage, resumed, history, dataset, trained_parameters=trains, examples=len(rows))


def sft_start(out: Path, cfg: TrainConfig) -> Path | None:
    """Where SFT starts: the aligned model when the run has an alignment stage, else the initial model."""
    return stage_model(out, "align") if cfg.align is not None else initial_model(out, cfg)


def run_sft(dataset: Path, out: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Stage 1 (skipped when done): SFT from the aligned model, else the initial one; the result in
    OUT/sft/model."""
    from pallm.train.sft import train_sft

    stage = out / "sft"
    if done := finished(stage):
        return done
    if cfg.align is not None and not finished(out / "align"):
        raise RuntimeError("SFT starts from the aligned model: run the alignment stage first")
    base = sft_start(out, cfg)
    if cfg.processes > 1 and not _launched():
        return launch("sft", dataset, out, cfg)
    speech = build_for(dataset, cfg.model, base, cfg.seed)
    if not cfg.sft.projector:
        freeze_projector(speech.model)
    resumed = last_checkpoint(stage)
    rows = sft_examples(dataset, cfg)
    history = train_sft(speech, rows, cfg.sft, stage, cfg.seed, cfg.model.gradient_checkpointing)
    return _finish(speech, stage, resumed, history, dataset, examples=len(rows))


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
    from pallm.train.grpo import train_grpo

    stage = out / "rl"
    if done := finished(stage):
        return done
    if not finished(out / "sft"):
        raise RuntimeError("RL starts from the SFT model: run SFT first")
    if cfg.processes > 1 and not _launched():
        return launch("rl", dataset, out, cfg)
    speech = build_for(dataset, cfg.model, stage_model(out, "sft"), cfg.seed)
    resumed = last_checkpoint(stage)
    history = train_grpo(speech, train_examples(dataset, cfg), reward_functions(cfg), cfg.rl, stage, cfg.seed,
                         cfg.model.gradient_checkpointing)  # fmt: skip
    return _finish(speech, stage, resumed, history, dataset)


def evaluation_config(run: Path, dataset: Path, splits: list[str] | None, limit: int | None) -> TrainConfig:
    """A finished run's configuration, evaluating `splits` of `dataset` (default: all of its splits)."""
    if not (run / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run} is not a training run (no {CONFIG_FILE}); train one with pallm train")
    if not finished(run / "sft"):
        raise ValueError(f"{run} has no finished SFT stage to evaluate; finish it with pallm train")
    if not (dataset / "manifest.json").is_file():
        raise FileNotFoundError(f"{dataset} is not a built dataset (no manifest.json)")
    cfg = TrainConfig.model_validate(json.loads((run / CONFIG_FILE).read_text(encoding="utf-8"))["config"])
    present = sorted({s["split"] for s in read_manifest(dataset)["shards"]})
    if splits and (missing := sorted(set(splits) - set(present))):
        raise ValueError(f"{dataset} has no split {', '.join(missing)}; it has {', '.join(present)}")
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"splits": splits or present, "limit": limit})})


def run_dataset(run: Path) -> Path:
    """The dataset a run trained on, as its folder recorded it."""
    dataset = Path(json.loads((run / CONFIG_FILE).read_text(encoding="utf-8"))["dataset"])
    if not (dataset / "manifest.json").is_file():
        raise FileNotFoundError(f"the dataset {run} trained on is no longer at {dataset}; the baselines fit on it")
    return dataset


def model_checkpoint(run: Path, cfg: TrainConfig, system: str) -> Path | None:
    """Where a model system of the run loads from (None: the pretrained source, for before-sft)."""
    if system == "before-sft":
        return initial_model(run, cfg)
    return stage_model(run, {"after-sft": "sft", "after-rl": "rl"}[system])


def run_systems(cfg: TrainConfig) -> tuple[str, ...]:
    """The systems a run of `cfg` scores: the references, the untrained model unless `eval.before_sft` is off, and
    each trained model."""
    return tuple(s for s in SYSTEMS if s != "before-sft" or cfg.eval.before_sft)


def finished_systems(run: Path, cfg: TrainConfig) -> tuple[str, ...]:
    """The systems a run of `cfg` can be evaluated as: its references, and each of its models whose stage
    finished."""
    done = {"after-sft": finished(run / "sft"), "after-rl": finished(run / "rl")}
    return tuple(s for s in run_systems(cfg) if done.get(s, True))


def _baseline_answers(
    system: str, dataset: Path, run: Path, cfg: TrainConfig, understand: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A baseline's answers, fitted on the run's training splits, and what its metrics record of it (the rows it
    was fitted on, or why it does not apply)."""
    from pallm.model import frozen_encoder
    from pallm.train import baselines, evaluate

    encode = frozen_encoder(cfg.model) if system == baselines.ENCODER_PROBE else None
    if system == baselines.ENCODER_PROBE and encode is None:
        return [], {"not_applicable": f"the {cfg.model.family} model's audio encoder trains with it"}
    try:
        fitted = baselines.fit_baseline(system, run_dataset(run), cfg.train_splits, encode)
    except baselines.NoTrainingRows as e:
        return [], {"not_applicable": str(e)}
    answers = evaluate.answer_rows(understand, baselines.predict_rows(fitted, dataset, understand, encode))
    return answers, {"fitted_on": {"splits": cfg.train_splits, "rows": len(fitted.fitted_ids)}}


def _model_answers(
    system: str, dataset: Path, run: Path, cfg: TrainConfig, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A model's answers to `rows` (of `dataset`), then its answers to the understanding rows with swapped
    audio."""
    from pallm.train import evaluate

    speech = build_for(dataset, inference_model(cfg.model), model_checkpoint(run, cfg, system),
                       cfg.seed)  # fmt: skip
    answers = evaluate.answer_rows(rows, evaluate.generate(speech, rows, cfg.eval.max_new_tokens, cfg.eval.batch_size))
    heard = evaluate.swap_audio(rows, cfg.seed)  # only the labels are scored: each answer stops after them
    texts = evaluate.generate(speech, heard, cfg.eval.max_new_tokens, cfg.eval.batch_size, labels_only=True)
    swapped = [{**a, "swapped_from": h["swapped_from"]}
               for a, h in zip(evaluate.answer_rows(heard, texts, labels_only=True), heard, strict=True)]  # fmt: skip
    return answers, swapped


def run_eval(dataset: Path, run: Path, cfg: TrainConfig, system: str, dest: Path | None = None) -> dict[str, Any]:
    """Evaluate one system of `run` on the evaluation splits of `dataset` (skipped when done): metrics in
    DEST/<system>.json, answers in <system>.jsonl (DEST: RUN/eval). Models are scored a second time with
    swapped audio (`evaluate.swap_audio`); baselines are fitted on the run's own training splits."""
    from pallm.train import baselines, evaluate
    from pallm.train.rewards import ReplySimilarityReward

    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; one of {SYSTEMS}")
    dest = dest or run / "eval"
    path = dest / f"{system}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    rows = eval_examples(dataset, cfg)
    extra: dict[str, Any] = {}
    swapped: list[dict[str, Any]] = []
    if system == "words-only":
        answers = evaluate.words_only_rows(rows)
    elif system in baselines.BASELINES:
        answers, extra = _baseline_answers(system, dataset, run, cfg, [r for r in rows if r["task"] == "understand"])
    else:
        answers, swapped = _model_answers(system, dataset, run, cfg, rows)
        scores = evaluate.score_rows(swapped, None, cfg.seed)
        extra["swapped"] = {"sentiment": scores["sentiment"], "emotion": scores["emotion"]}
    embedder = Path(cfg.rl.embedder) if cfg.rl.embedder else None
    scorer = ReplySimilarityReward(embedder) if any(a["task"] == "reply" for a in answers) else None
    metrics = {"system": system, **evaluate.score_rows(answers, scorer, cfg.seed), **extra}
    dest.mkdir(parents=True, exist_ok=True)
    for name, items in ((f"{system}.jsonl", answers), (f"{system}.swapped.jsonl", swapped)):
        if items:
            write_bytes_atomic(dest / name, "".join(json.dumps(a) + "\n" for a in items).encode())
    write_json_atomic(path, metrics)
    return metrics
