"""Per-speaker normalisation: each cue as a z-score against the same speaker's utterances.

A high voice is high for that speaker, not for the corpus: a man's "high" pitch is a woman's low
one. Statistics come from every utterance of the speaker in the build (all splits: no labels are
used, only the speaker's own voice), so they are a reduction between the measuring and describing
passes of the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

#: z column -> the raw column it normalises; F0 is compared in semitones (pitch is heard on a log scale).
Z_COLUMNS: dict[str, str] = {
    "f0_mean_z": "f0_mean_hz",
    "f0_range_z": "f0_range_st",
    "energy_mean_z": "energy_mean_db",
    "energy_range_z": "energy_range_db",
    "speech_rate_z": "speech_rate_sps",
}
#: A speaker needs this many measured utterances for a z-score; with fewer the z-score is null.
MIN_UTTERANCES = 5
_LOG_SCALE = {"f0_mean_hz"}


@dataclass(frozen=True)
class Stat:
    """Mean and standard deviation of one cue over one speaker's utterances."""

    n: int
    mean: float
    std: float


SpeakerNorms = dict[str, dict[str, Stat]]


def _value(column: str, v: Any) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    v = float(v)
    if column in _LOG_SCALE:
        return 12 * math.log2(v) if v > 0 else None
    return v


def speaker_norms(tables: Iterable[pa.Table]) -> SpeakerNorms:
    """Statistics per speaker and cue from tables holding `speaker_id` and the raw cue columns."""
    values: dict[str, dict[str, list[float]]] = {}
    for table in tables:
        cols = {c: table.column(c).to_pylist() for c in ("speaker_id", *Z_COLUMNS.values())}
        for i, speaker in enumerate(cols["speaker_id"]):
            per = values.setdefault(speaker, {c: [] for c in Z_COLUMNS.values()})
            for c in Z_COLUMNS.values():
                v = _value(c, cols[c][i])
                if v is not None:
                    per[c].append(v)
    norms: SpeakerNorms = {}
    for speaker, per in sorted(values.items()):
        norms[speaker] = {}
        for c, vs in per.items():
            if len(vs) >= MIN_UTTERANCES:
                a = np.asarray(vs)
                norms[speaker][c] = Stat(len(vs), float(a.mean()), float(a.std(ddof=1)))
    return norms


def z_scores(row: dict[str, Any], norms: SpeakerNorms) -> dict[str, float | None]:
    """The z columns of one row; null where the value or the speaker's statistics are missing."""
    stats = norms.get(row["speaker_id"], {})
    out: dict[str, float | None] = {}
    for z, c in Z_COLUMNS.items():
        v, s = _value(c, row.get(c)), stats.get(c)
        out[z] = (v - s.mean) / s.std if v is not None and s is not None and s.std > 1e-9 else None
    return out


def digest(norms: SpeakerNorms, speakers: Iterable[str]) -> str:
    """Hash of the statistics of the given speakers: a chunk's describe pass re-runs when these change."""
    picked = {s: {c: [st.n, round(st.mean, 9), round(st.std, 9)] for c, st in norms.get(s, {}).items()}
              for s in sorted(set(speakers))}  # fmt: skip
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]
