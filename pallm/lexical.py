"""The lexical-shortcut probe: how well do the words alone predict the label?

Per corpus, a TF-IDF (word 1-2 grams) + logistic regression classifier is trained on the text of
each utterance (the ASR transcript, else the corpus's reference) and evaluated out of fold, with
folds that never share a speaker. Each utterance gets the probability the words-only classifier
gave its gold emotion and the emotion it picked; the corpus gets accuracy and unweighted accuracy
against chance. An item whose words give its label away (the probe picks the gold emotion with
probability at least `min_p` and at least halfway from the label's base rate to certainty) is
flagged `words_give_label`: a model can be right on it without listening. On RAVDESS (two
sentences said in every emotion) the probe must sit at chance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pallm.stages import Row, Stage, per_row

PROBE_VERSION = "1"
FLAG = "words_give_label"
MAX_FOLDS = 5


@dataclass(frozen=True)
class CorpusProbe:
    """The probe's out-of-fold results on one corpus (empty when it could not be trained)."""

    corpus: str
    n: int
    folds: int
    accuracy: float | None = None
    unweighted_accuracy: float | None = None
    chance: float | None = None  # accuracy of always answering the most frequent label
    note: str = ""
    #: id -> (probability of the gold emotion, predicted emotion)
    items: dict[str, tuple[float, str]] = field(default_factory=dict, repr=False)
    #: emotion -> its share of the corpus (what a classifier knows without reading a word)
    priors: dict[str, float] = field(default_factory=dict, repr=False)

    def digest(self, ids: Iterable[str]) -> str:
        """Hash of the probe's verdicts on these items (a chunk's): what its rows depend on."""
        items = sorted((i, self.items.get(i)) for i in ids)
        blob = json.dumps({"v": PROBE_VERSION, "items": items, "priors": self.priors})
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


LexicalProbe = dict[str, CorpusProbe]


def text_of(row: dict[str, Any]) -> str:
    """What the words-only view of an utterance reads: the ASR transcript, else the reference."""
    return (row.get("transcript") or row.get("transcript_ref") or "").strip()


def probe_corpus(corpus: str, rows: list[dict[str, Any]]) -> CorpusProbe:
    """Cross-validate the words-only classifier over `rows` (id, speaker_id, emotion and text)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline

    rows = [r for r in rows if text_of(r)]
    speakers = sorted({r["speaker_id"] for r in rows})
    labels = sorted({r["emotion"] for r in rows})
    if len(speakers) < 2 or len(labels) < 2:
        return CorpusProbe(corpus, len(rows), 0, note="needs text from 2 or more speakers and 2 or more labels")
    texts = [text_of(r) for r in rows]
    y = np.array([r["emotion"] for r in rows])
    groups = [r["speaker_id"] for r in rows]
    folds = min(MAX_FOLDS, len(speakers))
    p_gold = np.zeros(len(rows))
    predicted = np.empty(len(rows), dtype=object)
    for train, test in GroupKFold(n_splits=folds).split(texts, y, groups):
        if len(set(y[train])) < 2:  # one label only: the classifier can only guess it
            p_gold[test] = (y[test] == y[train][0]).astype(float)
            predicted[test] = y[train][0]
            continue
        model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
                              LogisticRegression(max_iter=2000, C=1.0))  # fmt: skip
        model.fit([texts[i] for i in train], y[train])
        proba = model.predict_proba([texts[i] for i in test])
        classes = list(model.classes_)
        predicted[test] = [classes[j] for j in proba.argmax(axis=1)]
        for k, i in enumerate(test):
            p_gold[i] = proba[k, classes.index(y[i])] if y[i] in classes else 0.0
    correct = predicted == y
    per_label = [correct[y == lab].mean() for lab in labels]
    majority = max((y == lab).mean() for lab in labels)
    return CorpusProbe(
        corpus, len(rows), folds, accuracy=float(correct.mean()), unweighted_accuracy=float(np.mean(per_label)),
        chance=float(majority), priors={lab: float((y == lab).mean()) for lab in labels},
        items={r["id"]: (float(p), str(pred)) for r, p, pred in zip(rows, p_gold, predicted, strict=True)},
    )  # fmt: skip


def probe(tables: Iterable[pa.Table]) -> LexicalProbe:
    """The probe for every corpus in the measured rows (columns id, corpus, speaker_id, emotion, text)."""
    by_corpus: dict[str, list[dict[str, Any]]] = {}
    for t in tables:
        for r in t.to_pylist():
            by_corpus.setdefault(r["corpus"], []).append(r)
    return {c: probe_corpus(c, sorted(rows, key=lambda r: r["id"])) for c, rows in sorted(by_corpus.items())}


def lexical_row(row: Row, result: LexicalProbe, min_p: float) -> Row:
    """The probe's verdict on one row, and the flag where its words give the label away."""
    corpus = result.get(row["corpus"])
    item = corpus.items.get(row["id"]) if corpus else None
    flags = list(row.get("flags") or [])
    if item is None:
        return {"words_only_p": None, "words_only_label": None, "flags": flags}
    p, label = item
    prior = corpus.priors.get(row["emotion"], 0.0)
    if label == row["emotion"] and p >= max(min_p, (1 + prior) / 2) and FLAG not in flags:
        flags.append(FLAG)
    return {"words_only_p": p, "words_only_label": label, "flags": flags}


def lexical_stage(result: LexicalProbe, min_p: float) -> Stage:
    """The stage bound to this build's probe (its digest keys each chunk's shards)."""

    def process_row(row: Row) -> Row:
        return lexical_row(row, result, min_p)

    return Stage(
        name="lexical",
        version=f"{PROBE_VERSION}+p{min_p:g}",
        reads=("id", "corpus", "emotion", "flags"),
        writes=("words_only_p", "words_only_label", "flags"),
        process=per_row(process_row),
    )
