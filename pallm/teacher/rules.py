"""The rules teacher: deterministic rationales and replies written from the measured cues.

A fast baseline and a way to build without any LLM. Its answers have the same shape as an LLM's
and go through the same checks; the data card labels them as templates. The blind judgement is a
small arousal rule over the cue words, so its agreement with the gold label is a floor that any
LLM teacher should beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pallm.cues.grounding import cue_name, normalize_cue

RULES_VERSION = "1"
NEUTRAL_LEVELS = ("mid", "normal")

# What each cue suggests, in words a rationale can use.
_MEANING = {
    "pitch: high": "a raised pitch signals heightened arousal",
    "pitch: low": "a lowered pitch suggests low energy or subdued feeling",
    "pitch range: wide": "a wide pitch range makes the delivery animated",
    "pitch range: narrow": "a narrow pitch range makes the delivery flat",
    "loudness: loud": "a loud voice signals intensity",
    "loudness: quiet": "a quiet voice suggests withdrawal or calm",
    "rate: fast": "a fast rate suggests agitation or excitement",
    "rate: slow": "a slow rate suggests low energy or deliberation",
    "pitch contour: rising": "a rising contour sounds questioning or surprised",
    "pitch contour: falling": "a steep fall sounds final or forceful",
    "pauses: long": "long pauses suggest hesitation",
    "voice: whispered": "a whispered voice suggests secrecy or fear",
}
# Blind judgement: the first rule whose cues are all present picks the first of its emotions the corpus has.
_JUDGE_RULES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("voice: whispered",), ("fearful", "neutral")),
    (("loudness: loud", "pitch: high"), ("angry", "happy", "surprised")),
    (("loudness: loud",), ("angry", "frustrated", "happy")),
    (("pitch: high", "pitch range: wide"), ("happy", "surprised")),
    (("pitch: high",), ("fearful", "surprised", "happy")),
    (("loudness: quiet", "rate: slow"), ("sad", "calm")),
    (("pitch: low",), ("sad", "calm")),
    (("loudness: quiet",), ("calm", "sad")),
)
_REPLIES = {
    "positive": "That sounds wonderful, I can hear how pleased you are! Tell me more about it.",
    "negative": "I can hear this is weighing on you. I'm here; do you want to talk about what's wrong?",
    "neutral": "Okay, thanks for telling me. Is there anything you'd like me to do about it?",
}
_EMOTION_REPLIES = {
    "angry": "I can hear how frustrated you are, and that's fair. Let's figure out what went wrong together.",
    "sad": "You sound really down. I'm sorry; take your time, I'm listening.",
    "fearful": "You sound worried. It's okay, let's go through it calmly together.",
    "surprised": "Wow, that caught you off guard, didn't it? What happened?",
    "calm": "You sound at ease about it. Good; let me know if anything changes.",
}


def salient(cue_words: Sequence[str]) -> list[str]:
    """The cues that stand out: every measured cue but the speaker's usual levels."""
    return [c for c in cue_words if normalize_cue(c).split(": ")[-1] not in NEUTRAL_LEVELS]


def understand(transcript: str, cue_words: Sequence[str], emotion: str, sentiment: str | None) -> dict[str, Any]:
    """A template rationale citing the cues that stand out (or, if none, the usual levels)."""
    cited = salient(cue_words)[:4] or list(cue_words)[:2]
    meanings = [_MEANING.get(normalize_cue(c), f"the {cue_name(c)} is notable") for c in cited]
    if cited:
        reasons = "; ".join(f"{c} ({m})" for c, m in zip(cited, meanings, strict=True))
        rationale = f"The voice shows {reasons}. Together these cues fit a {emotion} delivery"
    else:
        rationale = f"No voice cue stands out from this speaker's usual delivery, which fits a {emotion} state"
    rationale += f", so the sentiment is {sentiment or 'unspecified'}."
    return {"rationale": rationale, "cited_cues": cited, "emotion": emotion, "sentiment": sentiment or "neutral"}


def judge(cue_words: Sequence[str], emotions: Sequence[str]) -> dict[str, Any]:
    """The emotion the arousal rules pick from the cue words alone."""
    from pallm.labels import LABEL_MAP

    have = {normalize_cue(c) for c in cue_words}
    pick = "neutral" if "neutral" in emotions else emotions[0]
    for needs, candidates in _JUDGE_RULES:
        found = [e for e in candidates if e in emotions]
        if found and all(n in have for n in needs):
            pick = found[0]
            break
    sentiment = next((m.sentiment for m in LABEL_MAP if m.emotion == pick and m.sentiment), "neutral")
    return {"emotion": pick, "sentiment": sentiment}


def reply(emotion: str, sentiment: str | None) -> dict[str, Any]:
    """A reply whose tone follows the gold emotion."""
    return {"reply": _EMOTION_REPLIES.get(emotion) or _REPLIES[sentiment or "neutral"]}


def words_only(transcript: str) -> dict[str, Any]:
    """The reply one would write from the words alone: it cannot react to the tone."""
    said = transcript.strip().rstrip(".!?") or "that"
    return {"reply": f'You said "{said}". Could you tell me a bit more about it?'}
