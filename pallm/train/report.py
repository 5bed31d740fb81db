"""The run's report (Markdown with plots) and the trained model's card, from what the steps wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pallm.train.checkpoints import finished
from pallm.train.steps import CONFIG_FILE, SYSTEMS, stage_model

REPORT = "report.md"


def _fmt(x: float | None) -> str:
    return "–" if x is None or x != x else f"{x:.3f}"


def comparison_table(metrics: dict[str, dict[str, Any]], task: str) -> list[str]:
    """Markdown rows: one per (corpus/split, system) with WA, UA and macro-F1 of `task` (sentiment or emotion)."""
    lines = [
        "| corpus/split | system | n | WA | UA | macro-F1 | invalid |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups = sorted({g for m in metrics.values() for g in m.get(task, {})})
    for g in groups:
        for system in SYSTEMS:
            s = metrics.get(system, {}).get(task, {}).get(g)
            if s:
                lines.append(f"| {g} | {system} | {s['n']} | {_fmt(s['wa'])} | {_fmt(s['ua'])} | "
                             f"{_fmt(s['macro_f1'])} | {s['invalid']} |")  # fmt: skip
    return lines


def reply_table(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows of the reply scores per (corpus/split, system)."""
    lines = ["| corpus/split | system | n | sim. to teacher | sim. to words-only | margin |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    groups = sorted({g for m in metrics.values() for g in m.get("reply", {})})
    for g in groups:
        for system in SYSTEMS:
            s = metrics.get(system, {}).get("reply", {}).get(g)
            if s:
                lines.append(f"| {g} | {system} | {s['n']} | {_fmt(s['sim_teacher'])} | "
                             f"{_fmt(s['sim_words_only'])} | {_fmt(s['margin'])} |")  # fmt: skip
    return lines


def confusion_table(scores: dict[str, Any]) -> list[str]:
    """A confusion matrix as Markdown: rows are the true labels, columns the predictions."""
    cols = [*scores["labels"], "(invalid)"]
    lines = ["| true \\ predicted | " + " | ".join(cols) + " |", "| --- " * (len(cols) + 1) + "|"]
    for label, row in zip(scores["labels"], scores["confusion"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(x) for x in row) + " |")
    return lines


def curves(history: list[dict[str, Any]], prefix: str) -> dict[str, list[tuple[int, float]]]:
    """Per-step series from a trainer's log history: `loss`, and every key starting with `prefix`."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        step = entry.get("step")
        for k, v in entry.items():
            if step is not None and isinstance(v, int | float) and (k == "loss" or k.startswith(prefix)):
                series.setdefault(k, []).append((step, float(v)))
    return series


def plot(series: dict[str, list[tuple[int, float]]], title: str, path: Path) -> bool:
    """A line plot of the series into `path` (PNG); False when there is nothing to draw."""
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, points in sorted(series.items()):
        ax.plot([s for s, _ in points], [v for _, v in points], label=name, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def describe(model: dict[str, Any]) -> str:
    """The starting model in words."""
    if model["family"] == "offline":
        decoder = Path(model["source"]).name if model["source"] else "SmolLM2-135M-Instruct"
        return f"Whisper {model['encoder']} encoder (frozen) + projector + {decoder}" + (
            " with LoRA" if model["lora"] else ""
        )
    if model["source"]:
        return model["source"] + (" with LoRA" if model["lora"] else "")
    return f"{model['size']} architecture, random initial weights (a test model)"


def write_report(out: Path) -> Path:
    """Write OUT/report.md (with plots) and the model card OUT/rl/model/README.md; returns the report's path."""
    run = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
    metrics = {
        s: json.loads(p.read_text(encoding="utf-8")) for s in SYSTEMS if (p := out / "eval" / f"{s}.json").is_file()
    }
    sft, rl = finished(out / "sft") or {}, finished(out / "rl") or {}
    figures = []
    if plot(curves(sft.get("history", []), "loss"), "SFT: training loss", out / "sft_loss.png"):
        figures.append("![SFT loss](sft_loss.png)")
    if plot(curves(rl.get("history", []), "rewards/"), "RL: mean reward per function", out / "rl_rewards.png"):
        figures.append("![RL rewards](rl_rewards.png)")
    kl = {k: v for k, v in curves(rl.get("history", []), "kl").items() if k == "kl"}
    if plot(kl, "RL: KL to the SFT model", out / "rl_kl.png"):
        figures.append("![RL KL](rl_kl.png)")
    model = run["config"]["model"]
    # The dataset by name and version (its content hash), not by a path on the machine that trained.
    manifest = json.loads((Path(run["dataset"]) / "manifest.json").read_text(encoding="utf-8"))
    data = f"{manifest['name']} (version {manifest['version']})"
    lines = [
        f"# Training report: {run['config']['name']}", "",
        f"Dataset {data}; model {model['family']} "
        f"({describe(model)}); "
        f"config fingerprint `{run['fingerprint']}`.",
        "WA is accuracy, UA balanced accuracy (mean recall over the true classes), macro-F1 over the true classes; "
        "an answer that does not parse counts as wrong (`invalid`). Words-only answers from the transcript alone "
        "(the lexical probe's out-of-fold emotion and the teacher's words-only reply).", "",
        "## Sentiment", "", *comparison_table(metrics, "sentiment"), "",
        "## Emotion", "", *comparison_table(metrics, "emotion"), "",
        "## Replies", "",
        "Cosine similarity (all-MiniLM-L6-v2) to the teacher's tone-aware reply and to the words-only reply; the "
        "margin is the first minus the second.", "", *reply_table(metrics), "",
        "## Training", "", *figures, "",
    ]  # fmt: skip
    final = metrics.get("after-rl") or metrics.get("after-sft")
    if final:
        lines += [f"## Confusion matrices ({final['system']})", ""]
        for task in ("sentiment", "emotion"):
            for group, scores in final.get(task, {}).items():
                lines += [f"{task}, {group}:", "", *confusion_table(scores), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    if (stage_model(out, "rl")).is_dir():
        card = [
            "---", "tags: [speech, paralinguistics, pallm]", "---", "",
            f"# {run['config']['name']}: a paralinguistics-aware speech LLM", "",
            f"{model['family']} trained by the PALLM pipeline: SFT on teacher rationales and tone-aware replies, "
            "then multi-task GRPO (answer correctness, format, grounding in measured cues, reply quality).", "",
            f"- Base: {describe(model)}",
            f"- Training data: {data}, splits {run['config']['train_splits']}",
            f"- Evaluation: splits {run['config']['eval']['splits']}; full results in the run's report.md", "",
            "## Results", "", *comparison_table({k: v for k, v in metrics.items()}, "sentiment"), "",
            "## Limits", "",
            "Labels come from acted corpora through a documented label map; sentiment is derived from emotion. "
            "Scores on one corpus do not carry to spontaneous speech.",
        ]  # fmt: skip
        (stage_model(out, "rl") / "README.md").write_text("\n".join(card) + "\n", encoding="utf-8")
    return path
