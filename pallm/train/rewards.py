"""Reward functions for multi-task RL, in TRL's calling convention: `f(prompts, completions, **columns)`
returns one float per completion, or None for rows the reward does not apply to (the other task).

Columns they read: `task` ("understand" or "reply"), `sentiment`, `emotion`, `cue_words`. The reply-quality
reward (an LLM judge, or similarity to the teacher's reply against the words-only reply) comes with the
trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pallm.cues.grounding import check_claims, claims_in_text
from pallm.train.answer import SENTIMENTS, Understanding, parse_understanding

UNDERSTAND, REPLY = "understand", "reply"


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational form (a list of messages whose content is
    a string or a list of typed parts)."""
    if isinstance(completion, str):
        return completion
    parts = []
    for m in completion:
        if m.get("role") != "assistant":
            continue
        content = m.get("content", "")
        parts += [content] if isinstance(content, str) else [p.get("text", "") for p in content]
    return "".join(parts)


def _per_answer(
    completions: Sequence[Any], task: Sequence[str], gold: Sequence[Any],
    score: Callable[[Understanding, Any], float],
) -> list[float | None]:  # fmt: skip
    """The loop the understanding rewards share: None for other rows and rows without `gold`, 0 for an
    unparseable answer, else `score(answer, gold)`."""
    out: list[float | None] = []
    for c, t, g in zip(completions, task, gold, strict=True):
        if t != UNDERSTAND or g is None:
            out.append(None)
            continue
        answer = parse_understanding(completion_text(c))
        out.append(0.0 if answer is None else score(answer, g))
    return out


def correctness_reward(
    completions: Sequence[Any], task: Sequence[str], sentiment: Sequence[str | None],
    emotion: Sequence[str | None] | None = None, **_: Any,
) -> list[float | None]:  # fmt: skip
    """Understanding rows: 1 for the right sentiment (and half-and-half with emotion where the row has one);
    0 for a wrong or unparseable answer. None for reply rows and rows without a gold sentiment."""

    def right(answer: Understanding, gold: tuple[str, str | None]) -> float:
        gold_s, gold_e = gold
        right_s = float(answer.sentiment == gold_s)
        return right_s if gold_e is None else (right_s + float(answer.emotion == gold_e)) / 2

    emotions = emotion if emotion is not None else [None] * len(completions)
    gold = [None if s is None else (s, e) for s, e in zip(sentiment, emotions, strict=True)]
    return _per_answer(completions, task, gold, right)


def format_reward(completions: Sequence[Any], task: Sequence[str], **_: Any) -> list[float | None]:
    """1 when the completion has its task's form, else 0: understanding answers parse with a known sentiment;
    replies are a few words of plain text, not a labelled answer."""
    out: list[float | None] = []
    for k, c in enumerate(completions):
        text = completion_text(c).strip()
        if task[k] == UNDERSTAND:
            answer = parse_understanding(text)
            out.append(float(answer is not None and answer.sentiment in SENTIMENTS))
        else:
            labelled = parse_understanding(text) is not None
            out.append(float(3 <= len(text.split()) <= 120 and not labelled))
    return out


def grounding_reward(
    completions: Sequence[Any], task: Sequence[str], cue_words: Sequence[Sequence[str] | None], **_: Any
) -> list[float | None]:
    """Understanding rows: the share of the voice claims (cited cues and plain-word claims in the reasoning)
    that the measured cue words support, by the shared grounding rule; 0 with no claim or no parse. None for
    reply rows and rows without measured cues."""

    def supported(answer: Understanding, measured: Sequence[str]) -> float:
        return check_claims([*answer.cues, *claims_in_text(answer.reasoning)], list(measured)).rate or 0.0

    return _per_answer(completions, task, cue_words, supported)
