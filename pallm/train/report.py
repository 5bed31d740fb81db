"""The run's report (Markdown with plots), `pallm evaluate`'s report, and the trained model's card, from what the
steps wrote.

Both reports open with the headline: per corpus and split, each system's sentiment and emotion UA with 95%
bootstrap intervals, UA with swapped audio, the reply margin, the chance levels, and a sentence generated from
the numbers. Then the paired changes (`changes`): SFT, RL, each model against the acoustic baseline, and each
model against itself with swapped audio, each with its interval; a change is called real only when its
interval excludes 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pallm.train.checkpoints import finished
from pallm.train.intervals import paired_changes
from pallm.train.steps import CONFIG_FILE, MODELS, SYSTEMS, stage_model

REPORT = "report.md"
CHANGES = "changes.json"
MINUS = "\u2212"


def _fmt(x: float | None) -> str:
    return "–" if x is None or x != x else f"{x:.3f}"


def _signed(x: float) -> str:
    return "–" if x != x else f"{'+' if x >= 0 else MINUS}{abs(x):.3f}"


def _interval(ci: list[float] | None) -> str:
    if not ci or ci[0] != ci[0]:
        return ""
    return f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def load_metrics(eval_dir: Path) -> dict[str, dict[str, Any]]:
    """Every system's metrics found in an evaluation folder, in the order of `SYSTEMS`."""
    return {s: json.loads(p.read_text(encoding="utf-8")) for s in SYSTEMS if (p := eval_dir / f"{s}.json").is_file()}


def _answers(path: Path) -> dict[str, dict[str, Any]]:
    """Understanding answers by id from an answers file."""
    if not path.is_file():
        return {}
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {r["id"]: r for r in rows if r["task"] == "understand"}


def comparisons(systems: set[str]) -> list[tuple[str, str, str]]:
    """The pairs of systems compared, among those present: SFT, RL, each model against the acoustic baseline,
    and each model with its own audio against swapped audio (`<model>/swapped`)."""
    pairs = [("before-sft", "after-sft", "SFT"), ("after-sft", "after-rl", "RL")]
    pairs += [("acoustic", m, f"{m} − acoustic") for m in MODELS]
    pairs += [(m, f"{m}/swapped", f"swapping the audio ({m})") for m in MODELS]
    return [(a, b, name) for a, b, name in pairs if a.split("/")[0] in systems and b.split("/")[0] in systems]


def changes(eval_dir: Path, seed: int = 0) -> list[dict[str, Any]]:
    """Paired changes in WA and UA between the systems of `comparisons`, per task and corpus/split, on the rows
    both answered; written to EVAL_DIR/changes.json."""
    systems = set(load_metrics(eval_dir))
    out = []
    for a, b, name in comparisons(systems):
        rows_a = _answers(eval_dir / f"{a}.jsonl")
        rows_b = _answers(eval_dir / (f"{b.split('/')[0]}.swapped.jsonl" if b.endswith("/swapped") else f"{b}.jsonl"))
        for task in ("sentiment", "emotion"):
            groups: dict[str, list[str]] = {}
            for i in sorted(set(rows_a) & set(rows_b)):
                if rows_a[i][task]:
                    groups.setdefault(f"{rows_a[i]['corpus']}/{rows_a[i]['split']}", []).append(i)
            for group, ids in groups.items():
                truth = [rows_a[i][task] for i in ids]
                right_a = [rows_a[i][f"pred_{task}"] == rows_a[i][task] for i in ids]
                right_b = [rows_b[i][f"pred_{task}"] == rows_b[i][task] for i in ids]
                for metric, c in paired_changes(truth, right_a, right_b, seed).items():
                    out.append({"change": name, "from": a, "to": b, "task": task, "group": group, "n": len(ids),
                                "metric": metric, "delta": c.delta, "low": c.low, "high": c.high,
                                "real": c.real})  # fmt: skip
    (eval_dir / CHANGES).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return out


def listener_scores(eval_dir: Path) -> dict[str, dict[str, float]]:
    """Per corpus/split, the UA with swapped audio of a perfect listener, who answers the labels of the clip it
    hears: the swap test's floor for a model that listens (a model that does not keeps its own UA). The swap
    depends on the clips and the seed only, so any model's swapped answers give it."""
    from pallm.train.evaluate import score_rows

    path = next((p for m in MODELS if (p := eval_dir / f"{m}.swapped.jsonl").is_file()), None)
    rows = list(_answers(path).values()) if path else []
    gold = {r["id"]: r for r in rows}
    heard = [{**r, "pred_sentiment": gold[r["swapped_from"]]["sentiment"], "pred_emotion": gold[r["swapped_from"]][
        "emotion"]} for r in rows if r.get("swapped_from") in gold]  # fmt: skip
    scores = score_rows(heard, None)
    groups = {g for t in ("sentiment", "emotion") for g in scores[t]}
    return {g: {t: scores[t][g]["ua"] for t in ("sentiment", "emotion") if g in scores[t]} for g in groups}


def _chance(scores: dict[str, Any] | None) -> float | None:
    """UA of a constant or random answer: one over the number of true classes present."""
    if not scores:
        return None
    present = sum(1 for row in scores["confusion"] if sum(row))
    return 1 / present if present else None


def headline(
    metrics: dict[str, dict[str, Any]], found: list[dict[str, Any]], listener: dict[str, dict[str, float]] | None = None
) -> list[str]:
    """One table per corpus/split (UA with intervals, UA with swapped audio, reply margin), the chance levels and
    the swapped-audio UA of a perfect listener (`listener_scores`), and a sentence: which systems are above chance
    and whether RL helped."""
    lines: list[str] = []
    groups = sorted({g for m in metrics.values() for t in ("sentiment", "emotion") for g in m.get(t, {})})
    for g in groups:
        lines += [f"### {g}", "",
                  "| system | n | sentiment UA [95% CI] | emotion UA [95% CI] | UA with swapped audio "
                  "(sent. / emo.) | reply margin |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        above: dict[str, list[str]] = {"sentiment": [], "emotion": []}
        chance = {t: next((c for m in metrics.values() if (c := _chance(m.get(t, {}).get(g)))), None)
                  for t in ("sentiment", "emotion")}  # fmt: skip
        for system, m in metrics.items():
            if "not_applicable" in m:
                lines.append(f"| {system} | – | not applicable: {m['not_applicable']} | | | |")
                continue
            cells = []
            for t in ("sentiment", "emotion"):
                sc = m.get(t, {}).get(g)
                cells.append(f"{_fmt(sc['ua'])}{_interval(sc.get('ua_ci'))}" if sc else "–")
                if sc and chance[t] is not None and sc.get("ua_ci") and sc["ua_ci"][0] > chance[t]:
                    above[t].append(system)
            swapped = m.get("swapped")
            swap = (
                " / ".join(_fmt(swapped[t].get(g, {}).get("ua")) for t in ("sentiment", "emotion")) if swapped else "–"
            )
            margin = m.get("reply", {}).get(g, {}).get("margin")
            n = next((m[t][g]["n"] for t in ("sentiment", "emotion") if g in m.get(t, {})), "–")
            lines.append(f"| {system} | {n} | {cells[0]} | {cells[1]} | {swap} | "
                         f"{_signed(margin) if margin is not None else '–'} |")  # fmt: skip
        lines += ["", "Chance: " + "; ".join(f"{t} UA {_fmt(c)}" for t, c in chance.items() if c is not None) + "."]
        if heard := (listener or {}).get(g):
            said = "; ".join(f"{t} UA {_fmt(u)}" for t, u in heard.items())
            lines[-1] += (f" With swapped audio a perfect listener scores {said} (it answers the clip it hears); a "
                          "model that does not listen keeps its own UA.")  # fmt: skip
        lines.append("")
        lines += [_verdict(g, above, found), ""]
    return lines


def _change_text(c: dict[str, Any]) -> str:
    return f"{_signed(c['delta'])} [{_signed(c['low'])}, {_signed(c['high'])}]"


def _verdict(group: str, above: dict[str, list[str]], found: list[dict[str, Any]]) -> str:
    """The headline sentence of one corpus/split, from the numbers."""
    parts = []
    for t, systems in above.items():
        parts.append(f"{t}: {', '.join(systems)}" if systems else f"{t}: none")
    text = "Above chance (the whole 95% interval): " + "; ".join(parts) + "."
    rl = [c for c in found if c["change"] == "RL" and c["group"] == group and c["metric"] == "ua"]
    if not rl:
        return text + " RL was not evaluated."
    said = " and ".join(f"{c['task']} UA by {_change_text(c)}" for c in rl)
    real = [c["task"] for c in rl if c["real"]]
    if not real:
        verdict = "no real change: every interval includes 0"
    else:
        verdict = "; ".join(f"a real {'gain' if c['delta'] > 0 else 'loss'} in {c['task']}" for c in rl if c["real"])
    return f"{text} RL changed {said}: {verdict}."


def changes_table(found: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of every paired change in UA and WA, with intervals."""
    lines = ["| corpus/split | change | task | n | Δ UA [95% CI] | Δ WA [95% CI] | real (UA) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    by_key: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for c in found:
        by_key.setdefault((c["group"], c["change"], c["task"]), {})[c["metric"]] = c
    for (group, name, task), m in by_key.items():
        ua, wa = m.get("ua"), m.get("wa")
        lines.append(f"| {group} | {name} | {task} | {ua['n']} | {_change_text(ua)} | "
                     f"{_change_text(wa) if wa else '–'} | {'yes' if ua['real'] else 'no'} |")  # fmt: skip
    return lines


def comparison_table(metrics: dict[str, dict[str, Any]], task: str) -> list[str]:
    """Markdown rows: one per (corpus/split, system) with WA, UA (with intervals) and macro-F1 of `task`."""
    lines = [
        "| corpus/split | system | n | WA [95% CI] | UA [95% CI] | macro-F1 | invalid |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups = sorted({g for m in metrics.values() for g in m.get(task, {})})
    for g in groups:
        for system in SYSTEMS:
            s = metrics.get(system, {}).get(task, {}).get(g)
            if s:
                lines.append(f"| {g} | {system} | {s['n']} | {_fmt(s['wa'])}{_interval(s.get('wa_ci'))} | "
                             f"{_fmt(s['ua'])}{_interval(s.get('ua_ci'))} | {_fmt(s['macro_f1'])} | "
                             f"{s['invalid']} |")  # fmt: skip
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


def _steps(n: int) -> str:
    return f"{n} step" + ("" if n == 1 else "s")


def stage_lines(align: dict[str, Any], sft: dict[str, Any], rl: dict[str, Any]) -> list[str]:
    """One line per finished stage: its steps and first and last loss, and for RL the mean reward and the share
    of groups whose rewards all tie (they have no advantage, so they teach nothing)."""
    lines = []
    for name, record in (("Alignment", align), ("SFT", sft)):
        loss = [e["loss"] for e in record.get("history", []) if "loss" in e]
        if loss:
            lines.append(f"- {name}: {_steps(len(loss))}, loss {loss[0]:.3f} → {loss[-1]:.3f} (mean of the last "
                         f"{min(5, len(loss))}: {sum(loss[-5:]) / len(loss[-5:]):.3f}).")  # fmt: skip
    logs = [e for e in rl.get("history", []) if "reward" in e]
    if logs:
        ties = [e["frac_reward_zero_std"] for e in logs if "frac_reward_zero_std" in e]
        tie = f"; groups whose rewards all tie: {sum(ties) / len(ties):.0%} of them" if ties else ""
        lines.append(f"- RL: {_steps(len(logs))}, mean reward {logs[0]['reward']:.3f} → {logs[-1]['reward']:.3f} "
                     f"(all steps {sum(e['reward'] for e in logs) / len(logs):.3f}){tie}.")  # fmt: skip
    return lines


def describe(model: dict[str, Any]) -> str:
    """The starting model in words."""
    if model["family"] == "offline":
        decoder = Path(model["source"]).name if model["source"] else "SmolLM2-135M-Instruct"
        rate = 50 / (model.get("pool", 1) * model["stack"])
        summary = f" + {model['summary_tokens']} summary tokens a clip" if model.get("summary_tokens") else ""
        return (
            f"Whisper {model['encoder']} encoder (frozen) + projector ({rate:g} audio tokens a second{summary}) + "
            + (f"{decoder}" + (" with LoRA" if model["lora"] else ""))
        )
    if model["source"]:
        return model["source"] + (" with LoRA" if model["lora"] else "")
    return f"{model['size']} architecture, random initial weights (a test model)"


def _dataset_name(dataset: Path) -> str:
    # The dataset by name and version (its content hash), not by a path on the machine that trained.
    manifest = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))
    return f"{manifest['name']} (version {manifest['version']})"


def evaluation_lines(eval_dir: Path, seed: int = 0) -> list[str]:
    """The evaluation part of a report: headline, changes, per-task tables, replies, the final model's confusion."""
    metrics = load_metrics(eval_dir)
    found = changes(eval_dir, seed)
    lines = [
        "WA is accuracy, UA balanced accuracy (mean recall over the true classes), macro-F1 over the true classes; "
        "an answer that does not parse counts as wrong (`invalid`). Intervals are 95% bootstrap intervals (clips "
        "resampled, seeded); a change between two systems has a paired interval on the same rows and is real only "
        "when its interval excludes 0. Words-only answers from the transcript alone (the lexical probe's "
        "out-of-fold emotion and the teacher's words-only reply). `acoustic` (the measured cues and their "
        "per-speaker z-scores) and `encoder-probe` (the frozen encoder's pooled frames) are supervised baselines "
        "fitted on the training split. With swapped audio each clip is answered hearing another clip of another "
        "label: a model that listens falls (a perfect listener to 0), one that does not listen stays.", "",
        "## Headline", "", *headline(metrics, found, listener_scores(eval_dir)),
        "## Changes", "", *changes_table(found), "",
        "## Sentiment", "", *comparison_table(metrics, "sentiment"), "",
        "## Emotion", "", *comparison_table(metrics, "emotion"), "",
        "## Replies", "",
        "Cosine similarity (all-MiniLM-L6-v2) to the teacher's tone-aware reply and to the words-only reply; the "
        "margin is the first minus the second.", "", *reply_table(metrics), "",
    ]  # fmt: skip
    final = next((metrics[m] for m in reversed(MODELS) if m in metrics), None)
    if final:
        lines += [f"## Confusion matrices ({final['system']})", ""]
        for task in ("sentiment", "emotion"):
            for group, scores in final.get(task, {}).items():
                lines += [f"{task}, {group}:", "", *confusion_table(scores), ""]
    return lines


def write_evaluation_report(dest: Path, run: Path, dataset: Path) -> Path:
    """Write DEST/report.md for the systems of `run` evaluated on `dataset` (`pallm evaluate`)."""
    record = json.loads((run / CONFIG_FILE).read_text(encoding="utf-8"))
    cfg, model = record["config"], record["config"]["model"]
    lines = [
        f"# Evaluation of {cfg['name']} on {_dataset_name(dataset)}", "",
        f"Run trained on {_dataset_name(Path(record['dataset']))}, splits {cfg['train_splits']}; model "
        f"{model['family']} ({describe(model)}); config fingerprint `{record['fingerprint']}`.",
        *evaluation_lines(dest, cfg["seed"]),
    ]  # fmt: skip
    path = dest / REPORT
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_report(out: Path) -> Path:
    """Write OUT/report.md (with plots) and the model card OUT/rl/model/README.md; returns the report's path."""
    run = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
    align, sft, rl = (finished(out / stage) or {} for stage in ("align", "sft", "rl"))
    figures = []
    if plot(curves(align.get("history", []), "loss"), "Alignment: training loss", out / "align_loss.png"):
        figures.append("![Alignment loss](align_loss.png)")
    if plot(curves(sft.get("history", []), "loss"), "SFT: training loss", out / "sft_loss.png"):
        figures.append("![SFT loss](sft_loss.png)")
    if plot(curves(rl.get("history", []), "rewards/"), "RL: mean reward per function", out / "rl_rewards.png"):
        figures.append("![RL rewards](rl_rewards.png)")
    kl = {k: v for k, v in curves(rl.get("history", []), "kl").items() if k == "kl"}
    if plot(kl, "RL: KL to the SFT model", out / "rl_kl.png"):
        figures.append("![RL KL](rl_kl.png)")
    model = run["config"]["model"]
    data = _dataset_name(Path(run["dataset"]))
    lines = [
        f"# Training report: {run['config']['name']}", "",
        f"Dataset {data}; model {model['family']} ({describe(model)}); config fingerprint `{run['fingerprint']}`.",
        *evaluation_lines(out / "eval", run["config"]["seed"]),
        "## Training", "", *stage_lines(align, sft, rl), "", *figures, "",
    ]  # fmt: skip
    path = out / REPORT
    path.write_text("\n".join(lines), encoding="utf-8")
    if (stage_model(out, "rl")).is_dir():
        metrics = load_metrics(out / "eval")
        card = [
            "---", "tags: [speech, paralinguistics, pallm]", "---", "",
            f"# {run['config']['name']}: a paralinguistics-aware speech LLM", "",
            f"{model['family']} trained by the PALLM pipeline: SFT on teacher rationales and tone-aware replies, "
            "then multi-task GRPO (answer correctness, format, grounding in measured cues, reply quality).", "",
            f"- Base: {describe(model)}",
            f"- Training data: {data}, splits {run['config']['train_splits']}",
            f"- Evaluation: splits {run['config']['eval']['splits']}; full results in the run's report.md", "",
            "## Results", "", *headline(metrics, json.loads((out / "eval" / CHANGES).read_text(encoding="utf-8"))),
            "## Limits", "",
            "Labels come from acted corpora through a documented label map; sentiment is derived from emotion. "
            "Scores on one corpus do not carry to spontaneous speech.",
        ]  # fmt: skip
        (stage_model(out, "rl") / "README.md").write_text("\n".join(card) + "\n", encoding="utf-8")
    return path
