"""The grounding rule: does a claimed cue agree with what was measured?

The one definition, used by the teacher checks, the review queue and the RL grounding reward. A
claim is a cue phrase of the vocabulary (`pallm.cues.vocabulary`), such as "pitch: high". The rule:

- a claim is **supported** when the utterance's measured `cue_words` hold the same phrase
  (case and spacing do not matter);
- it is **contradicted** when the same cue was measured with another value ("pitch: low" claimed,
  "pitch: mid" measured);
- it is **unsupported** otherwise: a cue the measurement does not show ("pauses: long" on an
  utterance without a long pause, an emphasis on a word that was not emphasised), or a phrase
  outside the vocabulary.

The claims are the cues an answer cites, plus those its free text makes in plain words ("her voice
is loud", "he speaks slowly": `claims_in_text`, not negated). An answer is grounded when it
cites at least one cue and every claim is supported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

GROUNDING_VERSION = "1"
#: The rule in one sentence, for the data card.
RULE = (
    "a cited cue is supported when the measured cue_words hold the same phrase; it is contradicted when the "
    "same cue was measured with another value, and unsupported when the measurement does not show it or it "
    "is not a phrase of the vocabulary; claims made in plain words in the rationale ('her voice is loud', "
    "'he speaks slowly') count too; an answer is grounded when it cites at least one cue and every claim is "
    "supported"
)
# Plain-word claims: the phrases a rationale uses for a cue value (lower-case text).
_PITCH_IS = r"\b(?:pitch|voice|tone) (?:is |was |sounds )?(?:very |quite )?"
TEXT_CLAIMS: dict[str, str] = {
    "pitch: high": rf"\bhigh(?:er)?[- ]pitch(?:ed)?\b|{_PITCH_IS}(?:high|raised)\b|\braised pitch\b",
    "pitch: low": rf"\blow(?:er)?[- ]pitch(?:ed)?\b|{_PITCH_IS}(?:low|lowered|deep)\b|\blowered pitch\b",
    "loudness: loud": r"\b(?:loud|loudly|louder|shout\w*|yell\w*)\b",
    "loudness: quiet": r"\b(?:quiet|quietly|softly|hushed)\b",
    "rate: fast": r"\b(?:fast|quickly|rapid(?:ly)?|hurried(?:ly)?)\b",
    "rate: slow": r"\b(?:slow|slowly)\b",
    "pitch range: wide": r"\b(?:wide|varied|lively|animated) (?:pitch )?range\b",
    "pitch range: narrow": r"\b(?:narrow|flat) (?:pitch )?range\b|\bmonoton\w*\b",
    "pitch contour: rising": r"\brising (?:pitch|intonation|contour)\b|\bpitch rises\b",
    "pitch contour: falling": r"\bfalling (?:pitch|intonation|contour)\b|\bpitch falls\b",
    "pauses: long": r"\b(?:long|lengthy) pauses?\b",
    "voice: whispered": r"\bwhisper\w*\b",
}
_NEGATION = re.compile(r"\b(?:not|no|never|isn't|wasn't|aren't|without|n't)\W+(?:\w+\W+){0,2}$")


def claims_in_text(text: str) -> list[str]:
    """The cue phrases a free text claims in plain words, skipping negated mentions ("not loud")."""
    low = text.lower()
    found = []
    for cue, pattern in TEXT_CLAIMS.items():
        for m in re.finditer(pattern, low):
            if not _NEGATION.search(low[max(0, m.start() - 30) : m.start()]):
                found.append(cue)
                break
    return found


def normalize_cue(phrase: str) -> str:
    """Canonical form of a cue phrase: lower case, single spaces, `cue: value`, straight quotes."""
    s = phrase.strip().lower().replace("\u2018", "'").replace("\u2019", "'").replace('"', "'")
    s = re.sub(r"\s+", " ", s)
    s = re.sub(r"\s*:\s*", ": ", s)
    return s.rstrip(".")


def cue_name(phrase: str) -> str:
    """The cue a phrase is about: 'pitch' for 'pitch: high', 'emphasis' for "emphasis on 'door'"."""
    s = normalize_cue(phrase)
    if s.startswith("emphasis"):
        return "emphasis"
    return s.split(":", 1)[0].strip()


@dataclass(frozen=True)
class Grounding:
    """The verdict on a list of claims against the measured cue words."""

    supported: tuple[str, ...]
    contradicted: tuple[str, ...]
    unsupported: tuple[str, ...]

    @property
    def grounded(self) -> bool:
        return bool(self.supported) and not self.contradicted and not self.unsupported

    @property
    def rate(self) -> float | None:
        """Share of the claims that are supported (None without claims): the RL reward's raw signal."""
        n = len(self.supported) + len(self.contradicted) + len(self.unsupported)
        return len(self.supported) / n if n else None

    @property
    def failed(self) -> tuple[str, ...]:
        return (*self.contradicted, *self.unsupported)


def check_claims(claims: Sequence[str], measured: Sequence[str]) -> Grounding:
    """Apply the grounding rule to `claims` against the utterance's `cue_words`."""
    have = {normalize_cue(m) for m in measured}
    measured_cues = {cue_name(m) for m in measured}
    supported, contradicted, unsupported = [], [], []
    for claim in dict.fromkeys(normalize_cue(c) for c in claims if c.strip()):
        if claim in have:
            supported.append(claim)
        elif cue_name(claim) in measured_cues and cue_name(claim) != "emphasis":
            contradicted.append(claim)
        else:
            unsupported.append(claim)
    return Grounding(tuple(supported), tuple(contradicted), tuple(unsupported))
