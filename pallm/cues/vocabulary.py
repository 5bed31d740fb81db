"""The cue vocabulary: how measured prosody becomes words a teacher, a reviewer and a reward can use.

This is the one definition. The teacher prompts quote these words, the grounding check compares a
rationale's claims with them, and the RL grounding reward does the same. Every rule is data below
and is printed in the data card.

Relative cues compare an utterance with its own speaker (z-scores, `pallm.cues.normalize`):
|z| < RELATIVE_Z is the speaker's usual ("mid", "normal", ...). The threshold was chosen on the
1,200 RAVDESS clips: at 0.5 the pitch and loudness words split each actor's clips roughly into
thirds, and "pitch: high" / "loudness: loud" pick out angry, happy, fearful and surprised clips far
more often than calm and neutral ones (see tests/test_speech_validity.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VOCABULARY_VERSION = "1"
RELATIVE_Z = 0.5
# Statements fall by themselves (declination: RAVDESS's median F0 slope over the words is -5 st/s), so
# only a net rise, or a fall steeper than the usual one, is worth a word. On RAVDESS each marks ~5-10%.
RISING_ST_PER_S = 2.0
FALLING_ST_PER_S = -9.0
LONG_PAUSE_S = 0.5


@dataclass(frozen=True)
class Scale:
    """A cue measured against the speaker: the word below -threshold, around zero, above +threshold."""

    cue: str
    column: str
    low: str
    mid: str
    high: str
    threshold: float = RELATIVE_Z

    def word(self, z: float | None) -> str | None:
        if z is None:
            return None
        level = self.low if z <= -self.threshold else self.high if z >= self.threshold else self.mid
        return f"{self.cue}: {level}"


SCALES: tuple[Scale, ...] = (
    Scale("pitch", "f0_mean_z", "low", "mid", "high"),
    Scale("pitch range", "f0_range_z", "narrow", "normal", "wide"),
    Scale("loudness", "energy_mean_z", "quiet", "normal", "loud"),
    Scale("rate", "speech_rate_z", "slow", "normal", "fast"),
)


def describe(row: dict[str, Any]) -> list[str]:
    """The cue words of a row that has its raw cues, z-scores, emphasis and flags."""
    words = [w for s in SCALES if (w := s.word(row.get(s.column))) is not None]
    slope = row.get("f0_slope_st_per_s")
    if slope is not None and (slope >= RISING_ST_PER_S or slope <= FALLING_ST_PER_S):
        words.append(f"pitch contour: {'rising' if slope > 0 else 'falling'}")
    longest = row.get("pause_longest_s")
    if longest is not None and longest >= LONG_PAUSE_S:
        words.append("pauses: long")
    flags = row.get("flags") or []
    if "no_f0" in flags and "no_speech" not in flags and row.get("transcript"):
        words.append("voice: whispered")  # words were heard, yet no voicing: whisper or creak
    words.extend(f"emphasis on '{e['word']}'" for e in row.get("emphasis_measured") or [])
    return words


def phrases() -> list[str]:
    """Every cue phrase of the vocabulary but the per-word emphasis ones (which name a word)."""
    out = [f"{s.cue}: {level}" for s in SCALES for level in (s.low, s.mid, s.high)]
    return [*out, "pitch contour: rising", "pitch contour: falling", "pauses: long", "voice: whispered"]


def rules() -> list[dict[str, str]]:
    """The vocabulary as a table for the data card."""
    out = [
        {"cue": s.cue, "measure": f"{s.column} (per speaker)",
         "words": f"{s.low} if z <= -{s.threshold:g}; {s.high} if z >= {s.threshold:g}; else {s.mid}"}
        for s in SCALES
    ]  # fmt: skip
    out += [
        {"cue": "pitch contour", "measure": "f0_slope_st_per_s",
         "words": f"rising if >= {RISING_ST_PER_S:g} st/s; falling if <= {FALLING_ST_PER_S:g} st/s"},
        {"cue": "pauses", "measure": "pause_longest_s", "words": f"long if >= {LONG_PAUSE_S:g} s"},
        {"cue": "voice", "measure": "flags", "words": "whispered if words were heard but no F0 was found"},
        {"cue": "emphasis on 'w'", "measure": "emphasis_measured",
         "words": "each word whose F0 is 2.5 st or energy 4 dB above the utterance's median word"},
    ]  # fmt: skip
    return out
