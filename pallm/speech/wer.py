"""Word error rate of a transcript against a corpus's reference, after the same text normalisation."""

from __future__ import annotations

import re

_DROP = re.compile(r"[^\w' ]+")  # punctuation and emphasis markers (Expresso's *word*) carry no words


def normalize(text: str) -> str:
    """Lower case, punctuation dropped (apostrophes kept), whitespace collapsed."""
    return " ".join(_DROP.sub(" ", text.lower().replace("_", " ")).split())


def word_error_rate(reference: str | None, hypothesis: str) -> float | None:
    """WER of `hypothesis` against `reference`; None when there is no usable reference."""
    import jiwer

    ref = normalize(reference or "")
    if not ref:
        return None
    hyp = normalize(hypothesis)
    if not hyp:
        return 1.0  # every reference word deleted
    return float(jiwer.wer(ref, hyp))
