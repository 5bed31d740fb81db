"""Training examples from a built dataset: chat-formatted, the audio in the prompt, for both tasks.

Each row gives an understanding example (target: reasoning from the voice, then sentiment and emotion, in the
format of `pallm.train.answer`) and a reply example (target: the tone-aware reply). Where the dataset has
`reviews.parquet`, labelers' decisions apply first: rejected rows leave, edited texts replace the teacher's.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pallm.dataset import read_columns, read_manifest, shards
from pallm.review.export import REVIEWS_FILE, apply_reviews
from pallm.train.answer import SENTIMENTS, format_understanding
from pallm.train.rewards import REPLY, UNDERSTAND

SYSTEM = (
    "You are a voice assistant who hears how things are said, not only the words: pitch, loudness, pace, "
    "pauses and voice quality."
)
COLUMNS = ("id", "corpus", "split", "emotion", "sentiment", "transcript", "cue_words", "rationale", "cited_cues",
           "reply", "words_only_reply", "words_only_label", "audio")  # fmt: skip


def understand_prompt(emotions: Sequence[str]) -> str:
    labels = f"Sentiment: {' | '.join(SENTIMENTS)}"
    if emotions:
        labels += f"\nEmotion: {' | '.join(emotions)}"
    return (
        "Listen to the speaker. Give the labels you hear, then reason from how they sound and name the voice cues "
        f"you rely on. Answer exactly in this form:\n{labels}\nReasoning: ...\nCues: cue; cue"
    )


ALIGN_PROMPT = "Say how the speaker sounds."
REPLY_PROMPT = "Reply to the speaker in one or two sentences, in a tone that fits how they sound."
LABELS_FILE = "labels.json"  # beside a saved model: the emotions its understanding prompt offers


def chat_prompt(instruction: str) -> list[dict[str, Any]]:
    """The prompt of an example: the system turn, then the user's turn with the audio and the instruction."""
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": instruction}]},
    ]


def emotion_labels(dataset_dir: Path) -> list[str]:
    """The emotions the understanding prompt offers: every emotion of the dataset, all splits, so training and
    evaluation prompts are the same."""
    return sorted({e for e in read_rows(dataset_dir, columns=["id", "emotion"]).column("emotion").to_pylist() if e})


def read_rows(dataset_dir: Path, splits: Sequence[str] | None = None, columns: Sequence[str] = COLUMNS) -> pa.Table:
    """The dataset's rows (the columns training needs), with the labelers' decisions applied when present."""
    paths = [s["path"] for s in shards(read_manifest(dataset_dir), splits)]
    table = read_columns(dataset_dir, paths, columns)
    reviews = dataset_dir / REVIEWS_FILE
    if reviews.is_file():
        table = apply_reviews(table, pq.read_table(reviews))
    return table


def examples(
    dataset_dir: Path, understand_share: float = 0.5, seed: int = 0, splits: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Chat examples (TRL's prompt/completion form) for both tasks.

    `understand_share` is the share of understanding examples in the mix: 0.5 keeps both examples of every
    row; above it, each reply example is kept with probability 2(1 - share), below it each understanding
    example with probability 2 * share (seeded).
    """
    if not 0 <= understand_share <= 1:
        raise ValueError("understand_share must be between 0 and 1")
    rows = read_rows(dataset_dir, splits).to_pylist()
    emotions = emotion_labels(dataset_dir)
    keep = {UNDERSTAND: min(1.0, 2 * understand_share), REPLY: min(1.0, 2 * (1 - understand_share))}
    rng = random.Random(seed)
    out = []
    for r in sorted(rows, key=lambda r: r["id"]):
        targets = {}
        if r["rationale"] and r["sentiment"]:
            targets[UNDERSTAND] = (
                understand_prompt(emotions),
                format_understanding(r["rationale"], r["cited_cues"] or [], r["sentiment"], r["emotion"]),
            )
        if r["reply"]:
            targets[REPLY] = (REPLY_PROMPT, r["reply"])
        for task, (instruction, target) in targets.items():
            if rng.random() >= keep[task]:
                continue
            out.append({
                "id": r["id"], "corpus": r["corpus"], "split": r["split"], "task": task,
                "prompt": chat_prompt(instruction),
                "completion": [{"role": "assistant", "content": [{"type": "text", "text": target}]}],
                "audio": r["audio"]["bytes"], "sentiment": r["sentiment"], "emotion": r["emotion"],
                "cue_words": list(r["cue_words"] or []), "reply": r["reply"],
                "words_only_reply": r["words_only_reply"], "words_only_label": r["words_only_label"],
                "transcript": r["transcript"] or "", "review": r.get("review", "none"), "answer_prefix": False,
            })  # fmt: skip
    return out


def heard_target(cue_words: Sequence[str], sentiment: str, emotion: str | None, cues: bool = True) -> str:
    """An alignment target: what the clip sounds like in the answer format's lines, without the reasoning (the
    labels, then the measured cue words with `cues`); the labels alone are how an understanding answer begins."""
    lines = [f"Sentiment: {sentiment}", *([f"Emotion: {emotion}"] if emotion else [])]
    if cues:
        lines.append(f"Cues: {'; '.join(cue_words) or 'none'}")
    return "\n".join(lines)


def align_examples(
    dataset_dir: Path, splits: Sequence[str], cues: bool = True, prompt: str = "align"
) -> list[dict[str, Any]]:
    """The alignment stage's examples: one per labelled row of `splits` (the training splits; never the
    evaluation's), the audio with an instruction and `heard_target` as the completion. The instruction is
    `ALIGN_PROMPT` (`prompt="align"`) or the understanding prompt (`"understand"`), whose answer begins with
    that very target. Under the understanding prompt the target is marked `answer_prefix`: it is how the answer
    begins, not all of it, so the turn's end is no target (the model must not learn to stop after the labels,
    which SFT then has to unlearn)."""
    if prompt not in ("align", "understand"):
        raise ValueError(f"unknown alignment prompt {prompt!r}; align or understand")
    rows = read_rows(dataset_dir, splits, columns=("id", "corpus", "split", "sentiment", "emotion", "cue_words",
                                                   "audio")).to_pylist()  # fmt: skip
    instruction = ALIGN_PROMPT if prompt == "align" else understand_prompt(emotion_labels(dataset_dir))
    return [
        {"id": r["id"], "corpus": r["corpus"], "split": r["split"], "prompt": chat_prompt(instruction),
         "completion": [{"role": "assistant", "content": [
             {"type": "text", "text": heard_target(r["cue_words"] or [], r["sentiment"], r["emotion"], cues)}]}],
         "audio": r["audio"]["bytes"], "answer_prefix": prompt == "understand"}
        for r in sorted(rows, key=lambda r: r["id"]) if r["sentiment"]
    ]  # fmt: skip
