"""Supervised baselines, the references a speech LLM is measured against: fitted on the run's training split
only and scored on exactly the rows the models are scored on, as systems of their own.

- `acoustic`: the classic supervised SER baseline. The measured cue columns (F0, energy, voice quality, rate,
  pauses, level and duration) and their z-scores against the same speaker's utterances, median-imputed where a
  cue could not be measured (a whisper has no F0), standardised, into a logistic regression.
- `encoder-probe`: what a frozen audio encoder can hand the decoder at best. Each clip's encoder frames (the
  very frames the model receives, from the same cache) pooled into their mean and standard deviation over
  time, standardised, into a logistic regression.

One classifier per label (sentiment, emotion) over the unified labels of the label map, so a baseline fitted on
one corpus can be scored on another dataset. The speaker statistics use no labels; they come from every row of
the dataset whose rows are being featurised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pallm.train.data import read_rows

ACOUSTIC, ENCODER_PROBE = "acoustic", "encoder-probe"
BASELINES = (ACOUSTIC, ENCODER_PROBE)
CUE_COLUMNS = (
    "f0_mean_hz", "f0_range_st", "f0_slope_st_per_s", "voiced_fraction", "energy_mean_db", "energy_range_db",
    "jitter_local", "shimmer_local", "hnr_db", "speech_rate_wps", "speech_rate_sps", "pause_count", "pause_total_s",
    "pause_longest_s", "level_rms_dbfs", "level_peak_dbfs", "active_fraction", "duration_s",
)  # fmt: skip
TASKS = ("sentiment", "emotion")
#: Inverse regularisation of both probes, chosen on RAVDESS (actors 1-16 fit, 17-20 scored, 240 clips). Cues:
#: C = 0.1 gave sentiment/emotion UA 0.74/0.56, C = 1 0.71/0.52, C = 10 0.68/0.50; an RBF SVM (C = 1) 0.76/0.53
#: and a random forest 0.71/0.51 did no better, and without the level and duration columns emotion UA was 0.52.
#: Whisper base's frames: 0.79-0.80/0.66-0.68 for every C from 0.01 to 10.
C = {ACOUSTIC: 0.1, ENCODER_PROBE: 0.1}

Featurise = Callable[[Path, Sequence[dict[str, Any]]], np.ndarray]


class NoTrainingRows(ValueError):
    """The training splits hold no labelled row to fit a baseline on."""


@dataclass
class Fitted:
    """A baseline's classifiers and the ids of the rows they were fitted on."""

    name: str
    classifiers: dict[str, Any]  # task -> fitted scikit-learn pipeline
    fitted_ids: tuple[str, ...]

    def predict(self, features: np.ndarray) -> dict[str, list[str | None]]:
        """Per task, the predicted label of each row (None where the task had no training labels)."""
        n = len(features)
        return {t: list(c.predict(features)) if c is not None else [None] * n for t, c in self.classifiers.items()}


def _classifier(c: float) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                         LogisticRegression(C=c, max_iter=5000))  # fmt: skip


def fit(name: str, rows: Sequence[dict[str, Any]], features: np.ndarray) -> Fitted:
    """One classifier per task on the rows that carry that label (`rows[k]` is described by `features[k]`)."""
    classifiers: dict[str, Any] = {}
    for task in TASKS:
        keep = [k for k, r in enumerate(rows) if r.get(task)]
        labels = {rows[k][task] for k in keep}
        if len(labels) < 2:
            classifiers[task] = None  # nothing to tell apart
            continue
        classifiers[task] = _classifier(C[name]).fit(features[keep], [rows[k][task] for k in keep])
    return Fitted(name, classifiers, tuple(r["id"] for r in rows))


def acoustic_features(dataset: Path, rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """The cue columns of `rows` (ids of `dataset`) and their per-speaker z-scores; NaN where not measured.

    A speaker's mean and standard deviation come from all of that speaker's rows in the dataset."""
    table = read_rows(dataset, columns=["id", "speaker_id", *CUE_COLUMNS]).to_pylist()
    raw = {r["id"]: np.array([np.nan if r[c] is None else r[c] for c in CUE_COLUMNS], dtype=float) for r in table}
    speaker = {r["id"]: r["speaker_id"] for r in table}
    by_speaker: dict[str, list[np.ndarray]] = {}
    for i, values in raw.items():
        by_speaker.setdefault(speaker[i], []).append(values)
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for s, rows_of_s in by_speaker.items():
        values = np.stack(rows_of_s)
        with np.errstate(all="ignore"):  # a cue never measured for a speaker stays NaN and is imputed
            std = np.nanstd(values, axis=0)
            stats[s] = (np.nanmean(values, axis=0), np.where(std > 0, std, np.nan))
    out = []
    for r in rows:
        mean, std = stats[speaker[r["id"]]]
        out.append(np.concatenate([raw[r["id"]], (raw[r["id"]] - mean) / std]))
    return np.stack(out)


def encoder_features(encode: Callable[[list[np.ndarray]], list[np.ndarray]], audio: Sequence[bytes]) -> np.ndarray:
    """Each clip's encoder frames pooled over time: their mean, then their standard deviation."""
    from pallm.train.collate import waveform

    pooled = []
    for start in range(0, len(audio), 32):  # a few clips at a time: frames are large, pooled rows small
        for frames in encode([waveform(a) for a in audio[start : start + 32]]):
            pooled.append(np.concatenate([frames.mean(axis=0), frames.std(axis=0)]))
    return np.stack(pooled)


def featuriser(name: str, encode: Callable[[list[np.ndarray]], list[np.ndarray]] | None) -> Featurise:
    """How `name` turns rows of a dataset into features (rows with `id`, and `audio` for the encoder probe)."""
    if name == ACOUSTIC:
        return acoustic_features
    if name == ENCODER_PROBE:
        if encode is None:
            raise ValueError("the encoder probe needs a model family with a frozen audio encoder")
        return lambda _dataset, rows: encoder_features(encode, [r["audio"] for r in rows])
    raise ValueError(f"unknown baseline {name!r}; one of {BASELINES}")


def train_rows(dataset: Path, splits: Sequence[str], with_audio: bool) -> list[dict[str, Any]]:
    """The labelled rows of the training splits (the labelers' rejections applied), sorted by id."""
    columns = ["id", "sentiment", "emotion", *(["audio"] if with_audio else [])]
    rows = [r for r in read_rows(dataset, splits, columns).to_pylist() if r["sentiment"] or r["emotion"]]
    if with_audio:
        for r in rows:
            r["audio"] = r["audio"]["bytes"]
    return sorted(rows, key=lambda r: r["id"])


def fit_baseline(
    name: str, dataset: Path, splits: Sequence[str], encode: Callable[[list[np.ndarray]], list[np.ndarray]] | None
) -> Fitted:
    """Fit baseline `name` on the training splits of `dataset`."""
    featurise = featuriser(name, encode)
    rows = train_rows(dataset, splits, with_audio=name == ENCODER_PROBE)
    if not rows:
        raise NoTrainingRows(f"no labelled rows in splits {list(splits)} of {dataset} to fit the {name} baseline on")
    return fit(name, rows, featurise(dataset, rows))


def predict_rows(
    fitted: Fitted, dataset: Path, examples: Sequence[dict[str, Any]],
    encode: Callable[[list[np.ndarray]], list[np.ndarray]] | None,
) -> list[str]:  # fmt: skip
    """The baseline's answers to `examples` (understanding examples of `dataset`), as answer texts."""
    from pallm.train.evaluate import label_answer

    if not examples:
        return []
    labels = fitted.predict(featuriser(fitted.name, encode)(dataset, examples))
    why = f"the {fitted.name} baseline's classifiers."
    return [label_answer(why, s, e) for s, e in zip(labels["sentiment"], labels["emotion"], strict=True)]
