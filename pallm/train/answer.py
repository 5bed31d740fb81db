"""The fixed, parseable answer format of the understanding task: the labels first, then the reasoning and cues.

    Sentiment: positive
    Emotion: happy
    Reasoning: The pitch is high and she speaks fast, which sounds excited.
    Cues: pitch: high; rate: fast

`Emotion` is present where the corpus has one. The labels come first because a small decoder that reasons
first decides from the cue words it has just written, not from the audio: on RAVDESS actors 17-20 the same
aligned offline backbone after the same SFT scored emotion UA 0.629 and sentiment 0.841 with the labels first,
and 0.383 and 0.346 with the reasoning first (and a heard-label opening sentence), 55 of 240 answers unreadable.
The reasoning then says why, and the grounding reward checks it against the measured cues. The SFT targets are
written with `format_understanding`, and the RL rewards and the evaluation read model output with
`parse_understanding`, which takes the lines in any order.
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
    lines = [f"Sentiment: {sentiment}", *([f"Emotion: {emotion}"] if emotion else []),
             f"Reasoning: {' '.join(reasoning.split())}", f"Cues: {'; '.join(cues) or 'none'}"]  # fmt: skip
    return "\n".join(lines)


def labels_given(text: str, emotion: bool) -> bool:
    """Whether an answer being written has finished its sentiment line (and its emotion line, with `emotion`):
    a line counts once the next one has begun."""
    done = {m[1].lower() for line in text.split("\n")[:-1] if (m := _LINE.match(line))}
    return "sentiment" in done and (not emotion or "emotion" in done)


def parse_understanding(text: str, need_reasoning: bool = True) -> Understanding | None:
    """Read an answer in the format above; None when it has no sentiment line, or no reasoning with
    `need_reasoning`.

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
    if (need_reasoning and not reasoning) or not sentiment:
        return None
    cues_text = " ".join(fields.get("cues", []))
    cues = tuple(c.strip() for c in cues_text.split(";") if c.strip() and c.strip().lower() != "none")
    return Understanding(reasoning, cues, sentiment, _label(fields.get("emotion")))


def _label(values: list[str] | None) -> str | None:
    if not values:
        return None
    word = re.sub(r"[^\w\s-]", "", values[0]).strip().lower()
    return word.split()[0] if word else None
