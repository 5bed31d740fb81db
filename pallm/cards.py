"""The data card: a Hugging Face dataset card whose body follows Datasheets for Datasets.

Every number in it is computed from the shards and the quarantine table of the build, never typed
by hand. Plots go to `card/` beside it.
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from pallm import dataset, lexical
from pallm.corpora import get_adapter
from pallm.corpora.base import Quarantined
from pallm.cues import grounding, vocabulary
from pallm.cues.normalize import MIN_UTTERANCES, Z_COLUMNS
from pallm.labels import LABEL_MAP, LABEL_MAP_VERSION
from pallm.review import export as review_export
from pallm.schema import COLUMNS
from pallm.shards import atomic_path, write_bytes_atomic, write_json_atomic

TEMPLATE = Path(__file__).parent / "templates" / "data_card.md.j2"
STAT_COLUMNS = (
    "id", "corpus", "split", "speaker_id", "gender", "emotion_native", "emotion", "sentiment",
    "duration_s", "level_rms_dbfs", "source_sample_rate", "source_channels", "flags",
    "transcript", "asr_wer", "asr_confidence", "word_timing", "cue_words",
    "f0_mean_hz", "energy_mean_db", "speech_rate_wps", "pause_total_s", *Z_COLUMNS,
    "words_only_p", "words_only_label", "teacher_label", "teacher", "checks",
)  # fmt: skip
#: Per-label cue medians shown in the card: the column and its heading.
CUE_SUMMARY = {
    "f0_mean_z": "pitch z", "energy_mean_z": "loudness z", "speech_rate_z": "rate z",
    "f0_mean_hz": "F0 Hz", "speech_rate_wps": "words/s", "pause_total_s": "pauses s",
}  # fmt: skip
SPLIT_ORDER = ("train", "validation", "test")


def render_card(out: Path, manifest: dict[str, Any], quarantined: Sequence[Quarantined]) -> str:
    """Compute the statistics over the manifest's shards, draw the plots and render the card's Markdown."""
    df = dataset.read_columns(out, [s["path"] for s in manifest["shards"]], STAT_COLUMNS).to_pandas()
    q = pd.DataFrame([x.as_dict() for x in quarantined], columns=["id", "corpus", "path", "stage", "reason"])
    corpora = sorted(manifest["corpus_roots"])
    adapters = [get_adapter(c) for c in corpora]
    plots = draw_plots(out / "card", df)
    splits: dict[str, list[str]] = {}
    for s in manifest["shards"]:
        splits.setdefault(s["split"], []).append(s["path"])
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True
    )
    env.filters["md"] = _md_table
    env.filters["tojson"] = json.dumps
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(
        m=manifest,
        built_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        splits=[(s, sorted(splits[s])) for s in (*SPLIT_ORDER, *sorted(set(splits) - set(SPLIT_ORDER))) if s in splits],
        adapters=adapters,
        synthetic=any(a.synthetic for a in adapters),
        license_ids=sorted({a.license_id for a in adapters}),
        rows=len(df),
        hours=df["duration_s"].sum() / 3600 if len(df) else 0.0,
        by_corpus=_counts(df, ["corpus"]),
        by_split=_counts(df, ["corpus", "split"]),
        by_emotion=_pivot(df, "emotion"),
        by_sentiment=_pivot(df, "sentiment"),
        by_gender=_counts(df, ["corpus", "gender"]),
        by_speaker=_counts(df, ["corpus", "speaker_id", "gender"]),
        speaker_overlap=_speaker_overlap(df),
        label_map=[m for m in LABEL_MAP if m.corpus in corpora or m.corpus == "*"],
        label_map_version=LABEL_MAP_VERSION,
        quarantine_summary=_quarantine_summary(q),
        quarantine_items=q.head(100).fillna("").to_dict("records"),
        quarantine_total=len(q),
        columns=COLUMNS,
        plots=plots,
        size_category=_size_category(len(df)),
        speech=manifest["config"]["asr"] != "none",
        wer=_wer_table(df),
        flags=_flag_counts(df),
        cues=_cue_table(df),
        cue_words=_cue_word_shares(df),
        vocabulary=vocabulary.rules(),
        vocabulary_version=vocabulary.VOCABULARY_VERSION,
        min_utterances=MIN_UTTERANCES,
        lexical=_lexical_table(df),
        lexical_flag=lexical.FLAG,
        teacher=_teacher_summary(df, manifest["config"]["teacher"]),
        grounding_rule=grounding.RULE,
        annotation=review_export.dataset_section(out),
    )


def _lexical_table(df: pd.DataFrame) -> pd.DataFrame:
    """The words-only probe per corpus: out-of-fold accuracy and unweighted accuracy against chance."""
    cols = ["corpus", "utterances", "accuracy", "unweighted accuracy", "chance (majority)", "chance (1/labels)",
            f"flagged {lexical.FLAG}"]  # fmt: skip
    if df.empty or df["words_only_label"].isna().all():
        return pd.DataFrame(columns=cols)
    rows = []
    for corpus, g in df[df["words_only_label"].notna()].groupby("corpus"):
        correct = g["words_only_label"] == g["emotion"]
        labels = g["emotion"].unique()
        rows.append([corpus, len(g), round(correct.mean(), 3),
                     round(float(pd.Series([correct[g["emotion"] == lab].mean() for lab in labels]).mean()), 3),
                     round(g["emotion"].value_counts(normalize=True).max(), 3), round(1 / len(labels), 3),
                     int(g["flags"].map(lambda f: lexical.FLAG in list(f)).sum())])  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def _teacher_summary(df: pd.DataFrame, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """Grounding, agreement and format rates per corpus, token usage and cost of the teacher's answers."""
    if cfg["backend"] == "none":
        return None
    done = df[df["checks"].notna()] if len(df) else df
    per = []
    names = {"grounded": "grounded", "agrees": "agrees with gold", "well_formed": "well-formed"}
    for corpus, g in done.groupby("corpus"):
        checks = pd.DataFrame(list(g["checks"]))
        rates = {label: f"{100 * checks[c].mean():.1f}%" for c, label in names.items()}
        review = int((~checks[list(names)].all(axis=1)).sum())
        per.append({"corpus": corpus, "answered": len(g), **rates, "flagged for review": review})
    usage = pd.DataFrame(list(done["teacher"])) if len(done) else pd.DataFrame()
    repairs = []
    if len(done):
        checks = pd.DataFrame(list(done["checks"])).assign(corpus=list(done["corpus"]),
                                                           prompts=list(usage["prompt_version"]))  # fmt: skip
        for (corpus, prompts), g in checks.groupby(["corpus", "prompts"]):
            asked = g["repaired"].map(lambda r: r is not None and len(r) > 0)
            repairs.append({
                "corpus": corpus, "prompt templates": prompts, "answered": len(g), "repaired": int(asked.sum()),
                **{f"{label} {when}": f"{100 * g[col].fillna(g[base]).mean():.1f}%"
                   for base, label in (("well_formed", "well-formed"), ("grounded", "grounded"))
                   for when, col in (("first", f"first_{base}"), ("after repair", base))},
            })  # fmt: skip
    prompt = int(usage["prompt_tokens"].sum()) if len(usage) else 0
    completion = int(usage["completion_tokens"].sum()) if len(usage) else 0
    pin, pout = cfg.get("price_input_per_mtok"), cfg.get("price_output_per_mtok")
    cost = (prompt * pin + completion * pout) / 1e6 if pin is not None and pout is not None else None
    if cost is not None and cfg.get("batch_api"):
        cost /= 2  # batch APIs bill half
    return {
        "backend": cfg["backend"], "rules": cfg["backend"] == "rules", "repair": bool(cfg.get("repair")),
        "models": sorted(usage["model"].unique()) if len(usage) else [],
        "prompts": sorted(usage["prompt_version"].unique()) if len(usage) else [],
        "per_corpus": pd.DataFrame(per, columns=["corpus", "answered", "grounded", "agrees with gold", "well-formed",
                                                 "flagged for review"]),
        "repairs": pd.DataFrame(repairs, columns=["corpus", "prompt templates", "answered", "repaired",
                                                  "well-formed first", "well-formed after repair",
                                                  "grounded first", "grounded after repair"]),
        "prompt_tokens": prompt, "completion_tokens": completion, "cost": cost,
        "sampling": {k: cfg[k] for k in ("temperature", "top_p", "seed", "max_tokens")},
    }  # fmt: skip


def _wer_table(df: pd.DataFrame) -> pd.DataFrame:
    """Word error rate against the corpus transcripts, per corpus and split (rows with a reference)."""
    ref = df[df["asr_wer"].notna()] if "asr_wer" in df and len(df) else df.iloc[0:0]
    if ref.empty:
        return pd.DataFrame(columns=["corpus", "split", "with reference", "mean WER", "median WER", "exact"])
    g = ref.groupby(["corpus", "split"])["asr_wer"]
    t = pd.DataFrame({"with reference": g.size(), "mean WER": g.mean().round(3), "median WER": g.median().round(3),
                      "exact": (g.apply(lambda s: (s == 0).mean()) * 100).round(1).astype(str) + "%"})  # fmt: skip
    return t.reset_index()


def _flag_counts(df: pd.DataFrame) -> pd.DataFrame:
    flags = df["flags"].explode().dropna() if len(df) else pd.Series(dtype=str)
    if flags.empty:
        return pd.DataFrame(columns=["flag", "utterances"])
    return flags.value_counts().rename_axis("flag").reset_index(name="utterances")


def _cue_table(df: pd.DataFrame) -> pd.DataFrame:
    """Median of each summary cue per corpus and emotion: how the labels sound, measured."""
    if df.empty or df["f0_mean_hz"].isna().all():
        return pd.DataFrame(columns=["corpus", "emotion", "utterances", *CUE_SUMMARY.values()])
    g = df.groupby(["corpus", "emotion"])
    t = g[list(CUE_SUMMARY)].median().round(2).rename(columns=CUE_SUMMARY)
    t.insert(0, "utterances", g.size())
    return t.reset_index()


def _cue_word_shares(df: pd.DataFrame) -> pd.DataFrame:
    """How often each cue word (emphasis aside) is said of the utterances."""
    words = df["cue_words"].explode().dropna() if len(df) else pd.Series(dtype=str)
    words = words[~words.str.startswith("emphasis on")]
    if words.empty:
        return pd.DataFrame(columns=["cue word", "utterances", "share"])
    counts = words.value_counts().sort_index()
    return pd.DataFrame({"cue word": counts.index, "utterances": counts.values,
                         "share": (100 * counts.values / len(df)).round(1).astype(str) + "%"})  # fmt: skip


def _counts(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame(columns=[*by, "utterances", "hours"])
    g = df.groupby(by, dropna=False).agg(utterances=("id", "size"), hours=("duration_s", "sum")).reset_index()
    g["hours"] = (g["hours"] / 3600).round(3)
    return g


def _pivot(df: pd.DataFrame, label: str) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame(columns=["corpus", label])
    t = df.assign(**{label: df[label].fillna("(none)")}).pivot_table(
        index=["corpus", label], columns="split", values="id", aggfunc="size", fill_value=0
    )
    t = t[[c for c in (*SPLIT_ORDER, *sorted(set(t.columns) - set(SPLIT_ORDER))) if c in t.columns]]
    t["total"] = t.sum(axis=1)
    hours = df.assign(**{label: df[label].fillna("(none)")}).groupby(["corpus", label])["duration_s"].sum() / 3600
    t["hours"] = hours.reindex(t.index).round(3)
    return t.reset_index()


def _speaker_overlap(df: pd.DataFrame) -> dict[str, int]:
    """Per corpus, how many speakers appear in more than one split (0 means speaker-independent)."""
    if df.empty:
        return {}
    n = df.groupby(["corpus", "speaker_id"])["split"].nunique()
    return {c: int((n.loc[c] > 1).sum()) for c in sorted(df["corpus"].unique())}


def _quarantine_summary(q: pd.DataFrame) -> pd.DataFrame:
    if q.empty:
        return pd.DataFrame(columns=["corpus", "stage", "reason", "items"])
    return (
        q.assign(reason=q["reason"].map(reason_kind))
        .groupby(["corpus", "stage", "reason"])
        .size()
        .rename("items")
        .reset_index()
    )


_SPECIFICS = (
    (re.compile(r"^\S+ line \d+:\s*"), ""),  # "<file> line 12: " prefixes
    (re.compile(r"'[^']*'|\"[^\"]*\""), "…"),  # quoted names and ids
    (re.compile(r"\S+\.(wav|flac|mp3|txt|csv|jsonl)\b", re.I), "…"),  # file names
    (re.compile(r"-?\d+(\.\d+)?"), "N"),  # numbers
)


def reason_kind(reason: str) -> str:
    """A quarantine reason without its specifics (file, line, ids, numbers), for counting alike items."""
    for pattern, repl in _SPECIFICS:
        reason = pattern.sub(repl, reason)
    return reason.strip()[:100]


def _md_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (pipes in cells escaped)."""
    if df.empty:
        return "_none_"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        v = f"{v:.3f}".rstrip("0").rstrip(".") if v == v else ""
    return str(v).replace("|", "\\|").replace("\n", " ")


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return name
    return "n>1M"


def draw_plots(folder: Path, df: pd.DataFrame) -> dict[str, str]:
    """Emotion counts per corpus, and distributions of duration and level; returns caption -> path."""
    if df.empty:
        return {}
    # The object API, not pyplot: no GUI backend, no global figure state, a second less to import.
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    plots: dict[str, str] = {}
    corpora = sorted(df["corpus"].unique())
    fig = Figure(figsize=(4.5 * len(corpora), 3.6))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.3, wspace=0.25)
    axes = fig.subplots(1, len(corpora), squeeze=False)
    colors = {"positive": "#4c9f70", "neutral": "#8a8f98", "negative": "#c8553d"}
    for ax, corpus in zip(axes[0], corpora, strict=True):
        counts = df[df["corpus"] == corpus].groupby(["emotion", "sentiment"], dropna=False).size()
        ax.bar(
            [e for e, _ in counts.index], counts.values,
            color=[colors.get(s, "#d9a441") for _, s in counts.index],
        )  # fmt: skip
        ax.set_title(f"{corpus}: utterances per emotion")
        ax.tick_params(axis="x", rotation=45)
    fig.legend(
        handles=[Patch(color=c, label=s) for s, c in colors.items()],
        loc="lower center",
        ncols=3,
        fontsize=8,
        frameon=False,
    )
    plots["Utterances per unified emotion (colour: sentiment)"] = _save(fig, folder / "emotions.png")
    fig = Figure(figsize=(9, 3.4))
    fig.subplots_adjust(left=0.07, right=0.98, top=0.95, bottom=0.17, wspace=0.2)
    a1, a2 = fig.subplots(1, 2)
    for corpus in corpora:
        part = df[df["corpus"] == corpus]
        a1.hist(part["duration_s"], bins=30, alpha=0.6, label=corpus)
        a2.hist(part["level_rms_dbfs"], bins=30, alpha=0.6, label=corpus)
    a1.set_xlabel("duration (s)")
    a2.set_xlabel("RMS level (dBFS, as recorded)")
    a1.legend()
    plots["Duration and recorded level"] = _save(fig, folder / "durations_levels.png")
    if df["f0_mean_z"].notna().any() or df["energy_mean_z"].notna().any():
        fig = Figure(figsize=(4.8 * len(corpora), 6.4))
        fig.subplots_adjust(left=0.1, right=0.98, top=0.95, bottom=0.14, hspace=0.45, wspace=0.25)
        axes = fig.subplots(2, len(corpora), squeeze=False)
        for col, corpus in enumerate(corpora):
            part = df[df["corpus"] == corpus]
            emotions = sorted(part["emotion"].unique())
            for row, (z, name) in enumerate((("f0_mean_z", "pitch"), ("energy_mean_z", "loudness"))):
                data = [part.loc[part["emotion"] == e, z].dropna().to_numpy() for e in emotions]
                ax = axes[row][col]
                ax.boxplot(data, tick_labels=emotions, showfliers=False)
                ax.axhline(0, color="#8a8f98", linewidth=0.8)
                ax.set_title(f"{corpus}: {name} (z against the speaker)", fontsize=9)
                ax.tick_params(axis="x", rotation=45, labelsize=8)
        plots["Measured pitch and loudness per emotion, normalised per speaker"] = _save(fig, folder / "cues.png")
    return plots


def _save(fig: Any, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return f"{path.parent.name}/{path.name}"


def register(index_dir: Path, out: Path, manifest: dict[str, Any], card: str) -> None:
    """Keep a copy of the card in `index_dir` and list the build in its `index.md`."""
    index_dir.mkdir(parents=True, exist_ok=True)
    # Builds may finish at the same time (a served deployment runs flow runs concurrently).
    with open(index_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _register_locked(index_dir, out, manifest, card)


def _register_locked(index_dir: Path, out: Path, manifest: dict[str, Any], card: str) -> None:
    version = manifest["version"]
    write_bytes_atomic(index_dir / f"{manifest['name']}-{version}.md", card.encode())
    index_path = index_dir / "index.json"
    try:
        entries = json.loads(index_path.read_text())
    except (OSError, ValueError):
        entries = []
    entries = [e for e in entries if (e["name"], e["version"]) != (manifest["name"], version)]
    entries.append({
        "name": manifest["name"], "version": version, "rows": manifest["rows"],
        "quarantined": manifest["quarantined"], "path": str(out.resolve()),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"), "code_version": manifest["code_version"],
    })  # fmt: skip
    write_json_atomic(index_path, entries)
    lines = [
        "# Built dataset versions",
        "",
        "| name | version | rows | quarantined | built | card | folder |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in sorted(entries, key=lambda e: e["built_at"], reverse=True):
        card_name = f"{e['name']}-{e['version']}.md"
        lines.append(
            f"| {e['name']} | {e['version']} | {e['rows']} | {e['quarantined']} | {e['built_at']} "
            f"| [{card_name}]({card_name}) | `{e['path']}` |"
        )
    write_bytes_atomic(index_dir / "index.md", ("\n".join(lines) + "\n").encode())
