"""The `train-pallm` flow: evaluate the baselines, align (when configured), SFT, evaluate, RL, evaluate, report; and the
`evaluate-pallm` flow, which evaluates every system of a finished run on another dataset with the same task.

The work is in `pallm.train.steps`; this module only sequences the steps, reports progress and publishes the
report as Prefect artifacts. Each step skips itself when its output is complete and the trainers resume from
their last checkpoint, so rerunning a crashed flow run continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from pallm.train import report, steps
from pallm.train.config import TrainConfig


@task(name="evaluate", task_run_name="evaluate {system}", cache_policy=NO_CACHE)
def evaluate(dataset: Path, out: Path, cfg: TrainConfig, system: str, dest: Path | None = None) -> dict[str, Any]:
    """Metrics of one system of the run `out` on the evaluation splits of `dataset` (into DEST, else OUT/eval)."""
    return steps.run_eval(dataset, out, cfg, system, dest)


@task(name="align", cache_policy=NO_CACHE)
def align(dataset: Path, out: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The alignment stage: the projector learns to say what is heard, the decoder frozen (when configured)."""
    return steps.run_align(dataset, out, cfg)


@task(name="sft", cache_policy=NO_CACHE)
def sft(dataset: Path, out: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Stage 1: supervised fine-tuning."""
    return steps.run_sft(dataset, out, cfg)


@task(name="rl", cache_policy=NO_CACHE)
def rl(dataset: Path, out: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Stage 2: multi-task GRPO."""
    return steps.run_rl(dataset, out, cfg)


@flow(name="train-pallm", log_prints=True, persist_result=False)
def train_pallm(dataset: str, out: str, config: str | None = None) -> dict[str, Any]:
    """Train a paralinguistics-aware speech LLM on a built dataset (SFT, then multi-task RL) and compare it with
    the words-only baseline and itself before each stage. `config` is a YAML/JSON file (`configs/`); without
    one, the tiny CPU configuration's defaults apply. Returns the headline metrics and where the report is."""
    log = get_run_logger()
    cfg = TrainConfig.load(Path(config) if config else None)
    data, run = Path(dataset), Path(out)
    steps.start_run(data, run, cfg)
    log.info("training %s on %s into %s", cfg.name, data, run)
    progress = create_progress_artifact(0.0, description=f"{cfg.name}: share of the run done (steps weighted by time)")
    for system in steps.run_systems(cfg):
        if system in (*steps.REFERENCES, "before-sft"):
            evaluate(data, run, cfg, system)
    update_progress_artifact(progress, 15)
    if aligned := align(data, run, cfg):
        loss = [e["loss"] for e in aligned["history"] if "loss" in e]
        log.info("alignment loss %.3f -> %.3f over %d steps", loss[0], loss[-1], len(loss)) if loss else None
    update_progress_artifact(progress, 30)
    loss = [e["loss"] for e in sft(data, run, cfg)["history"] if "loss" in e]
    log.info("SFT loss %.3f -> %.3f over %d steps", loss[0], loss[-1], len(loss)) if loss else None
    update_progress_artifact(progress, 50)
    evaluate(data, run, cfg, "after-sft")
    update_progress_artifact(progress, 60)
    rewards = [e["reward"] for e in rl(data, run, cfg)["history"] if "reward" in e]
    log.info("RL mean reward %.3f -> %.3f over %d steps", rewards[0], rewards[-1], len(rewards)) if rewards else None
    update_progress_artifact(progress, 90)
    evaluate(data, run, cfg, "after-rl")
    update_progress_artifact(progress, 97)
    path = report.write_report(run)
    publish(run, path)
    update_progress_artifact(progress, 100)
    return summary(run)


def summary(run: Path) -> dict[str, Any]:
    """Sentiment and emotion UA per system and evaluation group, and the report's path."""
    ua: dict[str, dict[str, float]] = {}
    for system, m in report.load_metrics(run / "eval").items():
        for task_name in ("sentiment", "emotion"):
            for group, s in m[task_name].items():
                ua.setdefault(system, {})[f"{task_name} {group}"] = s["ua"]
    return {"out": str(run.resolve()), "report": str((run / report.REPORT).resolve()), "ua": ua}


def publish(run: Path, path: Path) -> None:
    """The report and a UA table as Prefect artifacts."""
    create_markdown_artifact(path.read_text(encoding="utf-8"), key="train-pallm-report",
                             description=f"Training report of {run}")  # fmt: skip
    rows = [{"system": s, "metric": k, "UA": round(v, 4)} for s, m in summary(run)["ua"].items() for k, v in m.items()]
    create_table_artifact(rows, key="train-pallm-ua", description="Unweighted accuracy per system")


@flow(name="evaluate-pallm", log_prints=True, persist_result=False)
def evaluate_pallm(
    run: str, dataset: str, out: str, splits: list[str] | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Evaluate every system of a finished train-pallm run (its baselines, refitted on the run's own training
    split, and each trained model) on the splits of another built dataset (default: all of them); the metrics
    and a report in `out`, in the format of the run's own `eval/`."""
    log = get_run_logger()
    run_dir, data, dest = Path(run), Path(dataset), Path(out)
    cfg = steps.evaluation_config(run_dir, data, splits, limit)
    systems = steps.finished_systems(run_dir, cfg)
    log.info("evaluating %s of %s on %s (splits %s) into %s", ", ".join(systems), run_dir, data, cfg.eval.splits, dest)
    for system in systems:
        evaluate(data, run_dir, cfg, system, dest)
    path = report.write_evaluation_report(dest, run_dir, data)
    create_markdown_artifact(path.read_text(encoding="utf-8"), key="evaluate-pallm-report",
                             description=f"Evaluation of {run_dir} on {data}")  # fmt: skip
    return {"out": str(dest.resolve()), "report": str(path.resolve()), "systems": list(systems)}
