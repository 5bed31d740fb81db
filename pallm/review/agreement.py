"""Agreement between annotators, per question: Krippendorff's alpha over everyone, Cohen's kappa per pair.

The questions are the decision itself (accept / edit / reject), whether the item is usable for training
(accept or edit vs reject), and each rejection reason (chosen or not). Computed with the maintained
`krippendorff` and scikit-learn implementations.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import krippendorff
import numpy as np
from sklearn.metrics import cohen_kappa_score

from pallm.review.models import DECISIONS, REASONS


@dataclass(frozen=True)
class QuestionAgreement:
    question: str
    items: int  # items with at least two answers
    alpha: float | None  # None: undefined (fewer than two answers per item, or one answer only)
    kappa: dict[tuple[str, str], float | None]  # per annotator pair, over the items both answered


def questions(decision: str, reasons: Sequence[str]) -> dict[str, int]:
    """One annotation as answers to each question, coded as integers."""
    answers = {"decision": DECISIONS.index(decision), "usable": int(decision != "reject")}
    answers.update({f"reason: {code}": int(code in reasons) for code in REASONS})
    return answers


def agreement(annotations: Iterable[Mapping[str, Any]]) -> list[QuestionAgreement]:
    """Agreement from rows with `item_id`, `annotator`, `decision`, `reasons` (annotator decisions only)."""
    rows = list(annotations)
    annotators = sorted({r["annotator"] for r in rows})
    items = sorted({r["item_id"] for r in rows})
    a_idx = {a: k for k, a in enumerate(annotators)}
    i_idx = {i: k for k, i in enumerate(items)}
    names = list(questions("accept", []))
    data = {q: np.full((len(annotators), len(items)), np.nan) for q in names}
    for r in rows:
        for q, v in questions(r["decision"], list(r["reasons"] or [])).items():
            data[q][a_idx[r["annotator"]], i_idx[r["item_id"]]] = v
    results = []
    for q in names:
        m = data[q]
        paired = int((np.sum(~np.isnan(m), axis=0) >= 2).sum())
        results.append(QuestionAgreement(q, paired, _alpha(m) if paired else None, _kappas(m, annotators)))
    return results


def _alpha(m: np.ndarray) -> float | None:
    try:
        value = float(krippendorff.alpha(reliability_data=m, level_of_measurement="nominal"))
    except ValueError:  # a single value in the whole domain: agreement is undefined, not perfect
        return None
    return None if math.isnan(value) else value


def _kappas(m: np.ndarray, annotators: Sequence[str]) -> dict[tuple[str, str], float | None]:
    found: dict[tuple[str, str], float | None] = {}
    for (i, a), (j, b) in itertools.combinations(enumerate(annotators), 2):
        both = ~np.isnan(m[i]) & ~np.isnan(m[j])
        if both.sum() < 2:
            continue
        x, y = m[i][both], m[j][both]
        if len(set(x) | set(y)) < 2:
            found[(a, b)] = None
            continue
        k = float(cohen_kappa_score(x, y))
        found[(a, b)] = None if math.isnan(k) else k
    return found
