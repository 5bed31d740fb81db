"""Timed words and speaker turns: the values the speech stage hands to the cue measurements."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Word:
    """One recognised word with its time span inside the utterance (seconds) and its confidence."""

    word: str
    start: float
    end: float
    probability: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Turn:
    """A stretch of a recording where one speaker talks (seconds from the start of the recording)."""

    start: float
    end: float
    speaker: str
