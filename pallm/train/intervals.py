"""Bootstrap intervals for WA and UA: clips resampled with replacement, seeded, vectorised over resamples.

Both metrics depend only on each clip's true label and on whether the answer was right, so a resample is a
set of row indices and the metric of every resample comes from two `bincount`s. UA in a resample averages
recall over the classes that resample holds, as `pallm.train.metrics.score` does on the full set.

A paired interval draws the same resamples for two systems scored on the same rows, so what they share (which
clips are hard) cancels: a system against itself gives [0, 0]. A change is called real only when its
interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Change:
    """A paired change of one metric between two systems on the same rows: `b - a` and its interval."""

    metric: str
    delta: float
    low: float
    high: float

    @property
    def real(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0


def resamples(n: int, seed: int, count: int = RESAMPLES) -> np.ndarray:
    """`count` bootstrap resamples of `n` rows: a (count, n) array of row indices."""
    return np.random.default_rng(seed).integers(0, n, size=(count, n))


def _wa_ua(codes: np.ndarray, correct: np.ndarray, idx: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """WA and UA of every resample in `idx` (one row of indices per resample)."""
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * classes + codes[idx]).ravel()
    counts = np.bincount(flat, minlength=b * classes).reshape(b, classes)
    hits = np.bincount(flat, weights=correct[idx].ravel().astype(float), minlength=b * classes).reshape(b, classes)
    present = counts > 0
    recall = np.divide(hits, counts, out=np.zeros_like(hits), where=present)
    return correct[idx].mean(axis=1), recall.sum(axis=1) / present.sum(axis=1)


def _encode(truth: Sequence[str]) -> tuple[np.ndarray, int]:
    labels = sorted(set(truth))
    index = {label: k for k, label in enumerate(labels)}
    return np.array([index[t] for t in truth], dtype=np.int64), len(labels)


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def intervals(
    truth: Sequence[str], correct: Sequence[bool], seed: int = 0, count: int = RESAMPLES, level: float = LEVEL
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of WA and UA: `{"wa": (low, high), "ua": (low, high)}`."""
    if not truth:
        return {"wa": (float("nan"),) * 2, "ua": (float("nan"),) * 2}
    codes, classes = _encode(truth)
    wa, ua = _wa_ua(codes, np.asarray(correct, dtype=bool), resamples(len(truth), seed, count), classes)
    return {"wa": _quantiles(wa, level), "ua": _quantiles(ua, level)}


def paired_changes(
    truth: Sequence[str], correct_a: Sequence[bool], correct_b: Sequence[bool], seed: int = 0,
    count: int = RESAMPLES, level: float = LEVEL,
) -> dict[str, Change]:  # fmt: skip
    """The change from system a to system b in WA and in UA on the same rows, with paired bootstrap intervals."""
    if not len(truth) == len(correct_a) == len(correct_b):
        raise ValueError("a paired interval needs both systems' answers on the same rows")
    if not truth:
        nan = float("nan")
        return {m: Change(m, nan, nan, nan) for m in ("wa", "ua")}
    codes, classes = _encode(truth)
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    everything = np.arange(len(truth))[None, :]
    idx = resamples(len(truth), seed, count)
    (wa_a, ua_a), (wa_b, ua_b) = _wa_ua(codes, a, everything, classes), _wa_ua(codes, b, everything, classes)
    (ra_wa, ra_ua), (rb_wa, rb_ua) = _wa_ua(codes, a, idx, classes), _wa_ua(codes, b, idx, classes)
    return {
        "wa": Change("wa", float(wa_b[0] - wa_a[0]), *_quantiles(rb_wa - ra_wa, level)),
        "ua": Change("ua", float(ua_b[0] - ua_a[0]), *_quantiles(rb_ua - ra_ua, level)),
    }
