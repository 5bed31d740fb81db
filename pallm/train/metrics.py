"""Classification metrics as the field reports them: WA (accuracy), UA (balanced accuracy), macro-F1 and the
confusion matrix, per corpus and split, computed with scikit-learn; WA and UA with 95% bootstrap intervals
(`pallm.train.intervals`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from pallm.train.intervals import intervals

#: What a prediction that could not be parsed counts as: always wrong, never a class of its own in UA.
INVALID = "(invalid)"


@dataclass(frozen=True)
class Scores:
    n: int
    wa: float
    ua: float
    macro_f1: float
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: true label, columns: predicted (labels, then INVALID)
    invalid: int
    wa_ci: tuple[float, float]  # 95% bootstrap interval (clips resampled)
    ua_ci: tuple[float, float]


def score(
    truth: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str] | None = None, seed: int = 0
) -> Scores:
    """Scores of `predicted` against `truth`; None or unknown predictions count as wrong (`INVALID`).

    UA and macro-F1 average over the true labels only, so an invalid answer lowers recall without adding a class.
    The intervals' resamples are drawn from `seed`.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predictions")
    labels = tuple(labels) if labels is not None else tuple(sorted(set(truth)))
    pred = [p if p in labels else INVALID for p in predicted]
    if not truth:
        nan = float("nan")
        return Scores(0, nan, nan, nan, labels, (), 0, (nan, nan), (nan, nan))
    cm = confusion_matrix(truth, pred, labels=[*labels, INVALID])[: len(labels)]
    present = [label for label in labels if label in set(truth)]
    ci = intervals(truth, [p == t for p, t in zip(pred, truth, strict=True)], seed)
    return Scores(
        n=len(truth),
        wa=float(accuracy_score(truth, pred)),
        # UA is the mean recall over the true classes (balanced accuracy), which stays right with invalid answers.
        ua=float(recall_score(truth, pred, labels=present, average="macro", zero_division=0)),
        macro_f1=float(f1_score(truth, pred, labels=present, average="macro", zero_division=0)),
        labels=labels,
        confusion=tuple(tuple(int(x) for x in row) for row in cm),
        invalid=sum(p == INVALID for p in pred),
        wa_ci=ci["wa"],
        ua_ci=ci["ua"],
    )


def score_groups(
    rows: Iterable[Mapping[str, Any]], truth: str, predicted: str, by: Sequence[str] = ("corpus", "split"),
    labels: Sequence[str] | None = None, seed: int = 0,
) -> dict[tuple[str, ...], Scores]:  # fmt: skip
    """Scores per group (default: corpus and split) of rows holding a true and a predicted label."""
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get(truth) is not None:
            groups.setdefault(tuple(str(r[k]) for k in by), []).append(r)
    return {
        k: score([r[truth] for r in g], [r.get(predicted) for r in g], labels, seed) for k, g in sorted(groups.items())
    }
