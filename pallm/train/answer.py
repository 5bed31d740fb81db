"""The fixed, parseable answer format of the understanding task: reasoning first, then the labels.

    Reasoning: The pitch is high and she speaks fast, which sounds excited.
    Cues: pitch: high; rate: fast
    Sentiment: positive
    Emotion: happy

`Emotion` is present where the corpus has one. The SFT targets are written with `format_understanding`, and
the RL rewards and the evaluation read model output with `parse_understanding`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

SENTIMENTS = ("positive", "neutral", "negative")
_LINE = re.compile(r"^\s*(reasoning|cues|sentiment|emotion)\s*:\s*(.*)$", re.I)


@dataclass(frozen=True)
class Understanding:
    reasoning: str
    cues: tuple[str, ...]
    sentiment: str | None
    emotion: str | None


def format_understanding(reasoning: str, cues: Sequence[str], sentiment: str, emotion: str | None) -> str:
    """The SFT target of an understanding example."""
    lines = [f"Reasoning: {' '.join(reasoning.split())}", f"Cues: {'; '.join(cues) or 'none'}",
             f"Sentiment: {sentiment}"]  # fmt: skip
    if emotion:
        lines.append(f"Emotion: {emotion}")
    return "\n".join(lines)


def parse_understanding(text: str) -> Understanding | None:
    """Read an answer in the format above; None when it has no reasoning or no sentiment line.

    Labels are lower-cased and stripped of punctuation; a sentiment outside the three is kept as written, so a
    reward can tell a wrong answer from a malformed one.
    """
    fields: dict[str, list[str]] = {}
    current = None
    for line in text.strip().splitlines():
        m = _LINE.match(line)
        if m:
            current = m[1].lower()
            fields.setdefault(current, []).append(m[2].strip())
        elif current == "reasoning" and line.strip():  # reasoning may run over several lines
            fields[current].append(line.strip())
    reasoning = " ".join(fields.get("reasoning", [])).strip()
    sentiment = _label(fields.get("sentiment"))
    if not reasoning or not sentiment:
        return None
    cues_text = " ".join(fields.get("cues", []))
    cues = tuple(c.strip() for c in cues_text.split(";") if c.strip() and c.strip().lower() != "none")
    return Understanding(reasoning, cues, sentiment, _label(fields.get("emotion")))


def _label(values: list[str] | None) -> str | None:
    if not values:
        return None
    word = re.sub(r"[^\w\s-]", "", values[0]).strip().lower()
    return word.split()[0] if word else None
