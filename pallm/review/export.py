"""Decisions back into the pipeline: `reviews.parquet` beside the shards, the card's annotation section,
and the training view (accepted and edited items kept, with the edits; rejected items dropped)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pallm.dataset import read_manifest
from pallm.review.agreement import agreement
from pallm.review.models import DECISIONS, EDITABLE, REASONS, Adjudication, Decision, Item, User
from pallm.review.workflow import final
from pallm.shards import atomic_path, write_bytes_atomic

REVIEWS_FILE = "reviews.parquet"
_TS = pa.timestamp("us", tz="UTC")
REVIEWS_SCHEMA = pa.schema([
    ("item_id", pa.string()),  # the dataset row's `id`
    ("dataset", pa.string()),
    ("annotator", pa.string()),
    ("role", pa.string()),
    ("stage", pa.string()),  # annotation, or adjudication (a reviewer's final word)
    ("decision", pa.string()),  # accept, edit or reject
    ("edited_rationale", pa.string()),  # null where the teacher's text was kept
    ("edited_reply", pa.string()),
    ("edited_words_only_reply", pa.string()),
    ("reasons", pa.list_(pa.string())),
    ("comment", pa.string()),
    ("guideline_version", pa.string()),
    ("final", pa.bool_()),  # this row is the decision that counts for the item
    ("created_at", _TS),
    ("updated_at", _TS),
])  # fmt: skip
START, END = "<!-- annotation:start -->", "<!-- annotation:end -->"


def review_rows(db: Session, dataset: str) -> list[dict[str, Any]]:
    """Every decision and adjudication on the dataset's items, as rows of `REVIEWS_SCHEMA`."""
    items = {i.id: i for i in db.scalars(select(Item).where(Item.dataset == dataset).order_by(Item.id))}
    users = {u.id: u for u in db.scalars(select(User))}
    decisions: dict[int, list[Decision]] = {k: [] for k in items}
    for d in db.scalars(select(Decision).where(Decision.item_id.in_(list(items))).order_by(Decision.id)):
        decisions[d.item_id].append(d)
    adjudications = {
        a.item_id: a for a in db.scalars(select(Adjudication).where(Adjudication.item_id.in_(list(items))))
    }
    rows = []
    for item_pk, item in items.items():
        adj = adjudications.get(item_pk)
        chosen = final(item, decisions[item_pk], adj)
        for stage, d in [*(("annotation", d) for d in decisions[item_pk]), *([("adjudication", adj)] if adj else [])]:
            user = users[d.user_id]
            rows.append({
                "item_id": item.row_id, "dataset": dataset, "annotator": user.name, "role": user.role,
                "stage": stage, "decision": d.decision, **{f"edited_{k}": getattr(d, k) for k in EDITABLE},
                "reasons": list(d.reasons), "comment": d.comment, "guideline_version": d.guideline_version,
                "final": d is chosen, "created_at": d.created_at, "updated_at": d.updated_at,
            })  # fmt: skip
    return rows


def export(db: Session, dataset_dir: Path) -> dict[str, Any]:
    """Write `reviews.parquet` beside the shards and the annotation section of the card; returns the summary."""
    manifest = read_manifest(dataset_dir)
    rows = review_rows(db, manifest["name"])
    imported = db.scalar(select(func.count()).select_from(Item).where(Item.dataset == manifest["name"]))
    # The number of items imported for review travels in the file, so a rebuilt card can state it too.
    table = pa.Table.from_pylist(rows, schema=REVIEWS_SCHEMA.with_metadata({"imported": str(imported)}))
    with atomic_path(dataset_dir / REVIEWS_FILE) as tmp:
        pq.write_table(table, tmp)
    summary = summarize(table)
    card = dataset_dir / "README.md"
    if card.is_file():
        write_bytes_atomic(card, splice(card.read_text(encoding="utf-8"), card_section(summary)).encode())
    return summary


def summarize(reviews: pa.Table) -> dict[str, Any]:
    """Counts, rates and agreement from a reviews table."""
    rows = reviews.to_pylist()
    imported = (reviews.schema.metadata or {}).get(b"imported")
    annotations = [r for r in rows if r["stage"] == "annotation"]
    finals = [r for r in rows if r["final"]]
    reviewed = {r["item_id"] for r in rows}
    n_final = len(finals)
    return {
        "imported": int(imported) if imported is not None else None,
        "items_reviewed": len(reviewed),
        "items_final": n_final,
        "annotations": len(annotations),
        "adjudications": sum(r["stage"] == "adjudication" for r in rows),
        "annotators": len({r["annotator"] for r in annotations}),
        "final_decisions": {d: sum(r["decision"] == d for r in finals) for d in DECISIONS},
        "final_rates": {d: (sum(r["decision"] == d for r in finals) / n_final if n_final else None) for d in DECISIONS},
        "annotation_decisions": {d: sum(r["decision"] == d for r in annotations) for d in DECISIONS},
        "reasons": dict(Counter(c for r in rows for c in r["reasons"])),
        "agreement": agreement(annotations),
        "guideline_versions": sorted({r["guideline_version"] for r in rows}),
    }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def card_section(summary: dict[str, Any] | None) -> str:
    """The card's annotation section (between markers, so a later export replaces it)."""
    lines = [START, "## Annotation", ""]
    if summary is None:
        lines += ["Not reviewed yet: `pallm review import`, then `pallm review export` writes this section.", END]
        return "\n".join(lines) + "\n"
    s = summary
    f, r = s["final_decisions"], s["final_rates"]
    lines += [
        f"Labelers reviewed the teacher's rationales and replies in the annotation UI (guidelines version "
        f"{', '.join(s['guideline_versions']) or 'n/a'}). Decisions are in `{REVIEWS_FILE}`; training uses accepted "
        "and edited items (with the edits) and drops rejected ones.",
        "",
        "| | |",
        "|---|---|",
        *([f"| items imported for review | {s['imported']} |"] if s["imported"] is not None else []),
        f"| items with a decision | {s['items_reviewed']} |",
        f"| items with a final decision | {s['items_final']} |",
        f"| annotator decisions | {s['annotations']} by {s['annotators']} annotators |",
        f"| reviewer adjudications | {s['adjudications']} |",
        *(f"| final {d} | {f[d]} ({_fmt(r[d])}) |" for d in DECISIONS),
        "",
        "Rejection reasons: "
        + (", ".join(f"{REASONS[c].split(':')[0]} {n}" for c, n in sorted(s["reasons"].items())) or "none")
        + ".",
        "",
        "Agreement between annotators (items answered by two or more; Krippendorff's alpha, nominal; Cohen's "
        "kappa per pair; n/a where undefined):",
        "",
        "| question | items | Krippendorff's alpha | Cohen's kappa (pairs) |",
        "|---|---|---|---|",
    ]
    for q in s["agreement"]:
        kappas = "; ".join(f"{a}/{b} {_fmt(k)}" for (a, b), k in sorted(q.kappa.items())) or "n/a"
        lines.append(f"| {q.question} | {q.items} | {_fmt(q.alpha)} | {kappas} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def splice(card: str, section: str) -> str:
    """Replace the card's annotation section, or insert it before the licences (or at the end)."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END) + r"\n?", re.S)
    if pattern.search(card):
        return pattern.sub(lambda _: section, card, count=1)
    anchor = card.find("\n## Distribution and licences")
    return card + "\n" + section if anchor < 0 else card[: anchor + 1] + section + "\n" + card[anchor + 1 :]


def dataset_section(dataset_dir: Path) -> str:
    """The annotation section for a card being rendered: from `reviews.parquet` when the folder has one."""
    path = dataset_dir / REVIEWS_FILE
    return card_section(summarize(pq.read_table(path)) if path.is_file() else None)


def apply_reviews(table: pa.Table, reviews: pa.Table) -> pa.Table:
    """The training view of a dataset table: rows whose final decision is reject are dropped, edited texts
    replace the teacher's, and a `review` column says accept, edit or none (not reviewed)."""
    finals = {r["item_id"]: r for r in reviews.filter(pc.field("final")).to_pylist()}
    keep = [finals.get(i, {}).get("decision") != "reject" for i in table["id"].to_pylist()]
    table = table.filter(pa.array(keep))
    ids = table["id"].to_pylist()
    for k in EDITABLE:
        if k in table.column_names:
            old = table[k].to_pylist()
            new = [
                finals[i][f"edited_{k}"] if i in finals and finals[i][f"edited_{k}"] else o
                for i, o in zip(ids, old, strict=True)
            ]
            table = table.set_column(table.column_names.index(k), k, pa.array(new, pa.string()))
    review = [finals[i]["decision"] if i in finals else "none" for i in ids]
    return table.append_column("review", pa.array(review, pa.string()))
