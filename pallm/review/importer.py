"""Put a built dataset's items in the review store: a stratified sample plus every item the pipeline flagged."""

from __future__ import annotations

import io
import itertools
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import soundfile as sf
from sqlalchemy import select
from sqlalchemy.orm import Session

from pallm import lexical
from pallm.dataset import read_manifest
from pallm.review.models import Item, ItemAudio
from pallm.speech.stage import LOW_ASR_CONFIDENCE
from pallm.teacher.checks import FLAGS as TEACHER_FLAGS

#: Pipeline flags that send an item to review whatever the sample: the teacher's checks failed (grounding,
#: agreement with the gold label, format), ASR was unsure, or the words alone give the label away.
REVIEW_FLAGS = (*TEACHER_FLAGS.values(), LOW_ASR_CONFIDENCE, lexical.FLAG)
SAMPLE = "sample"
PEAKS = 600
#: Measurements shown on the item page beside the cue words.
MEASURED = (
    "f0_mean_hz", "f0_range_st", "f0_slope_st_per_s", "voiced_fraction", "energy_mean_db", "energy_range_db",
    "speech_rate_wps", "speech_rate_sps", "pause_count", "pause_total_s", "hnr_db", "jitter_local",
    "shimmer_local", "f0_mean_z", "energy_mean_z", "speech_rate_z", "asr_confidence", "words_only_p",
)  # fmt: skip
TEXT = ("transcript", "words", "cue_words", "rationale", "cited_cues", "teacher_label", "reply", "words_only_reply")
META = ("id", "corpus", "split", "speaker_id", "emotion", "sentiment", "duration_s", "flags")


@dataclass(frozen=True)
class ImportResult:
    dataset: str
    rows: int
    flagged: int
    sampled: int
    added: int
    already: int


def select_items(rows: Sequence[dict[str, Any]], sample: int, seed: int = 0) -> dict[str, list[str]]:
    """Row id -> why it goes to review: its review flags, or "sample" for a stratified sample of the rest.

    The sample is stratified by corpus and emotion: each stratum gets its share of `sample` (largest
    remainders first, so the shares add up), drawn at random with a fixed seed.
    """
    chosen = {r["id"]: [f for f in r["flags"] or [] if f in REVIEW_FLAGS] for r in rows}
    chosen = {k: v for k, v in chosen.items() if v}
    rest = [r for r in rows if r["id"] not in chosen]
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in sorted(rest, key=lambda r: r["id"]):
        strata[(r["corpus"], r["emotion"])].append(r["id"])
    n = min(sample, len(rest))
    if n:
        exact = {k: n * len(v) / len(rest) for k, v in strata.items()}
        shares = {k: int(x) for k, x in exact.items()}
        for k in sorted(exact, key=lambda k: (shares[k] - exact[k], k))[: n - sum(shares.values())]:
            shares[k] += 1
        rng = random.Random(seed)
        for k in sorted(strata):
            for row_id in rng.sample(strata[k], shares[k]):
                chosen[row_id] = [SAMPLE]
    return chosen


def waveform_peaks(wav: bytes, buckets: int = PEAKS) -> list[float]:
    """Peak absolute amplitude in `buckets` equal slices of the clip (0-1), for drawing the waveform."""
    x, _ = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    x = np.abs(x).max(axis=1)
    if len(x) == 0:
        return [0.0] * buckets
    edges = np.linspace(0, len(x), buckets + 1).astype(int)
    peaks = [float(x[a:b].max()) if b > a else 0.0 for a, b in itertools.pairwise(edges)]
    return [round(p, 4) for p in peaks]


def _measured(row: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(row[k]), 3) for k in MEASURED if row.get(k) is not None}


def import_dataset(db: Session, dataset_dir: Path, sample: int = 100, overlap: int = 1, seed: int = 0) -> ImportResult:
    """Import `dataset_dir`'s sample and flagged items; items already imported are left as they are."""
    if overlap < 1:
        raise ValueError("overlap must be at least 1")
    manifest = read_manifest(dataset_dir)
    name = manifest["name"]
    shards = [dataset_dir / s["path"] for s in manifest["shards"]]
    available = set(pq.read_schema(shards[0]).names) if shards else set()
    missing = [c for c in ("rationale", "reply", "words_only_reply") if c not in available]
    if shards and missing:
        raise ValueError(f"{dataset_dir} has no teacher output ({', '.join(missing)}): build it with a teacher")
    columns = [c for c in (*META, *TEXT, *MEASURED) if c in available]
    rows = [r for s in shards for r in pq.read_table(s, columns=columns).to_pylist()]
    chosen = select_items(rows, sample, seed)
    done = set(db.scalars(select(Item.row_id).where(Item.dataset == name)))
    todo = {k: v for k, v in chosen.items() if k not in done}
    by_id = {r["id"]: r for r in rows}
    added = 0
    for shard in shards:
        if not todo:
            break
        ids = pa.array(sorted(todo), pa.string())
        table = pq.read_table(shard, columns=["id", "audio"])
        table = table.filter(pc.is_in(table["id"], value_set=ids))
        for row_id, audio in zip(table["id"].to_pylist(), table["audio"].to_pylist(), strict=True):
            r, why = by_id[row_id], todo[row_id]
            item = Item(
                dataset=name, row_id=row_id, corpus=r["corpus"], split=r["split"], speaker_id=r["speaker_id"],
                emotion=r["emotion"], sentiment=r["sentiment"], duration_s=float(r["duration_s"]),
                transcript=r.get("transcript"), words=_jsonable(r.get("words") or []),
                cue_words=list(r.get("cue_words") or []), measured=_measured(r), rationale=r.get("rationale"),
                cited_cues=list(r.get("cited_cues") or []), teacher_label=r.get("teacher_label"),
                reply=r.get("reply"), words_only_reply=r.get("words_only_reply"), flags=list(r["flags"] or []),
                why=why, priority=0 if why != [SAMPLE] else 1, overlap=overlap,
            )  # fmt: skip
            db.add(item)
            db.flush()
            db.add(ItemAudio(item_id=item.id, wav=audio["bytes"], peaks=waveform_peaks(audio["bytes"])))
            added += 1
        db.commit()  # one transaction per shard: an interrupted import resumes where it stopped
    flagged = sum(1 for v in chosen.values() if v != [SAMPLE])
    return ImportResult(name, len(rows), flagged, len(chosen) - flagged, added, len(chosen) - len(todo))


def _jsonable(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return json.loads(json.dumps(words, default=float))
