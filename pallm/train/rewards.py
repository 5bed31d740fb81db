"""Reward functions for multi-task RL, in TRL's calling convention: `f(prompts, completions, **columns)`
returns one float per completion, or None for rows the reward does not apply to (the other task).

Columns they read: `task` ("understand" or "reply"), `sentiment`, `emotion`, `cue_words`. The reply-quality
reward (an LLM judge, or similarity to the teacher's reply against the words-only reply) comes with the
trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pallm.cues.grounding import check_claims, claims_in_text
from pallm.train.answer import SENTIMENTS, parse_understanding

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


def correctness_reward(
    completions: Sequence[Any], task: Sequence[str], sentiment: Sequence[str | None],
    emotion: Sequence[str | None] | None = None, **_: Any,
) -> list[float | None]:  # fmt: skip
    """Understanding rows: 1 for the right sentiment (and half-and-half with emotion where the row has one);
    0 for a wrong or unparseable answer. None for reply rows and rows without a gold sentiment."""
    out: list[float | None] = []
    for k, c in enumerate(completions):
        gold_s = sentiment[k]
        if task[k] != UNDERSTAND or gold_s is None:
            out.append(None)
            continue
        answer = parse_understanding(completion_text(c))
        if answer is None:
            out.append(0.0)
            continue
        gold_e = emotion[k] if emotion is not None else None
        right_s = float(answer.sentiment == gold_s)
        out.append(right_s if gold_e is None else (right_s + float(answer.emotion == gold_e)) / 2)
    return out


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
    out: list[float | None] = []
    for k, c in enumerate(completions):
        if task[k] != UNDERSTAND or cue_words[k] is None:
            out.append(None)
            continue
        answer = parse_understanding(completion_text(c))
        if answer is None:
            out.append(0.0)
            continue
        verdict = check_claims([*answer.cues, *claims_in_text(answer.reasoning)], list(cue_words[k]))
        out.append(verdict.rate or 0.0)
    return out
