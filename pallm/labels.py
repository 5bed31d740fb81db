"""The label map: each corpus's own emotion words -> our unified emotion -> sentiment.

One versioned table, printed in every data card. Sentiment is not a native label of any corpus we
ingest, so this mapping is a documented choice: change it here, bump LABEL_MAP_VERSION, and the
content hash of every chunk changes, so a rebuild relabels everything.
"""

from __future__ import annotations

from typing import NamedTuple

LABEL_MAP_VERSION = "1"

EMOTIONS = (
    "neutral", "calm", "happy", "sad", "angry", "fearful", "disgusted", "surprised",
    "frustrated", "confused", "other", "unknown",
)  # fmt: skip
SENTIMENTS = ("positive", "neutral", "negative")


class LabelMapping(NamedTuple):
    """One row of the label map."""

    corpus: str
    native: str
    emotion: str
    sentiment: str | None
    note: str = ""


_P, _N, _NEG = "positive", "neutral", "negative"

LABEL_MAP: tuple[LabelMapping, ...] = (
    # RAVDESS: the words of its README.
    LabelMapping("ravdess", "neutral", "neutral", _N),
    LabelMapping("ravdess", "calm", "calm", _N, "low arousal, no valence claimed"),
    LabelMapping("ravdess", "happy", "happy", _P),
    LabelMapping("ravdess", "sad", "sad", _NEG),
    LabelMapping("ravdess", "angry", "angry", _NEG),
    LabelMapping("ravdess", "fearful", "fearful", _NEG),
    LabelMapping("ravdess", "disgust", "disgusted", _NEG),
    LabelMapping("ravdess", "surprised", "surprised", _P, "RAVDESS portrays pleasant surprise"),
    # IEMOCAP: EmoEvaluation codes.
    LabelMapping("iemocap", "neu", "neutral", _N),
    LabelMapping("iemocap", "hap", "happy", _P),
    LabelMapping("iemocap", "exc", "happy", _P, "merged into hap, as in the standard 4-class setup"),
    LabelMapping("iemocap", "sad", "sad", _NEG),
    LabelMapping("iemocap", "ang", "angry", _NEG),
    LabelMapping("iemocap", "fru", "frustrated", _NEG),
    LabelMapping("iemocap", "fea", "fearful", _NEG),
    LabelMapping("iemocap", "sur", "surprised", _P),
    LabelMapping("iemocap", "dis", "disgusted", _NEG),
    LabelMapping("iemocap", "oth", "other", None, "no sentiment claimed"),
    LabelMapping("iemocap", "xxx", "unknown", None, "annotators did not agree"),
    # Expresso: speaking styles (read and conversational). Styles that are a manner of speaking
    # rather than an emotion map to neutral emotion and are kept in the `style` column.
    LabelMapping("expresso", "default", "neutral", _N),
    LabelMapping("expresso", "enunciated", "neutral", _N, "speaking manner"),
    LabelMapping("expresso", "narration", "neutral", _N, "speaking manner"),
    LabelMapping("expresso", "whisper", "neutral", _N, "speaking manner"),
    LabelMapping("expresso", "fast", "neutral", _N, "speaking manner"),
    LabelMapping("expresso", "projected", "neutral", _N, "speaking manner"),
    LabelMapping("expresso", "happy", "happy", _P),
    LabelMapping("expresso", "laughing", "happy", _P),
    LabelMapping("expresso", "awe", "surprised", _P),
    LabelMapping("expresso", "desire", "other", _P),
    LabelMapping("expresso", "sympathetic", "calm", _P),
    LabelMapping("expresso", "calm", "calm", _N),
    LabelMapping("expresso", "sad", "sad", _NEG),
    LabelMapping("expresso", "angry", "angry", _NEG),
    LabelMapping("expresso", "fearful", "fearful", _NEG),
    LabelMapping("expresso", "disgusted", "disgusted", _NEG),
    LabelMapping("expresso", "bored", "other", _NEG),
    LabelMapping("expresso", "sarcastic", "other", _NEG),
    LabelMapping("expresso", "confused", "confused", _NEG),
    LabelMapping("expresso", "sleepy", "calm", _N),
    LabelMapping("expresso", "animal", "other", None, "role-play voice"),
    LabelMapping("expresso", "animaldir", "other", None, "speaking to an animal"),
    LabelMapping("expresso", "child", "other", None, "role-play voice"),
    LabelMapping("expresso", "childdir", "other", None, "speaking to a child"),
    LabelMapping("expresso", "nonverbal", "other", None, "non-verbal sounds"),
    LabelMapping("expresso", "singing", "other", None),
    # Manifest and synthetic corpora use unified emotion words directly.
    *(
        LabelMapping("*", e, e, s)
        for e, s in (
            ("neutral", _N),
            ("calm", _N),
            ("happy", _P),
            ("sad", _NEG),
            ("angry", _NEG),
            ("fearful", _NEG),
            ("disgusted", _NEG),
            ("surprised", _P),
            ("frustrated", _NEG),
            ("confused", _NEG),
        )
    ),
)

_INDEX = {(m.corpus, m.native): m for m in LABEL_MAP}


class UnknownLabel(ValueError):
    """A label word that the label map does not know for that corpus."""


def map_label(corpus: str, native: str) -> LabelMapping:
    """Map a corpus's native label to the unified emotion and sentiment.

    Corpora without a table of their own (manifests, the synthetic corpus) use the `*` rows,
    which accept the unified emotion words themselves.
    """
    key = native.strip().lower()
    found = _INDEX.get((corpus, key)) or _INDEX.get(("*", key))
    if found is None:
        known = sorted({m.native for m in LABEL_MAP if m.corpus in (corpus, "*")})
        raise UnknownLabel(f"unknown {corpus} label {native!r}; known: {', '.join(known)}")
    return found


def corpus_emotions(corpus: str) -> tuple[str, ...]:
    """The unified emotions a corpus's labels map to, in EMOTIONS order ('other' and 'unknown' left out)."""
    own = {m.emotion for m in LABEL_MAP if m.corpus == corpus} or {m.emotion for m in LABEL_MAP if m.corpus == "*"}
    return tuple(e for e in EMOTIONS if e in own and e not in ("other", "unknown"))
