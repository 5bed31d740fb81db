"""Evaluation of one system on held-out examples: its answers, then the field's metrics for both tasks.

Understanding: WA, UA, macro-F1 and the confusion matrix for sentiment and for emotion, per corpus and split
(`pallm.train.metrics`). Replies: similarity to the teacher's tone-aware reply and to the words-only reply,
and the margin between them (`ReplySimilarityReward`). The words-only baseline answers from the transcript
alone: the lexical probe's out-of-fold emotion (and its sentiment), and the words-only reply.

The audio-swap test scores a model a second time with each clip's audio replaced by another clip's of the same
corpus and split (`swap_permutation`), the prompt and the gold labels unchanged. A model that listens follows
the audio it is given, so its UA against the original labels falls (to 0 for a perfect listener, since the
partners carry other labels); a model that reads the prompt or guesses does not move.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict
from statistics import mean
from typing import Any

from pallm.labels import EMOTIONS, UnknownLabel, map_label
from pallm.train.answer import SENTIMENTS, labels_given, parse_understanding
from pallm.train.metrics import score_groups
from pallm.train.rewards import REPLY, UNDERSTAND, ReplySimilarityReward


def generate(
    speech: Any, examples: Sequence[dict[str, Any]], max_new_tokens: int, batch_size: int, labels_only: bool = False
) -> list[str]:
    """Greedy answers of `speech` to the examples' prompts (audio included), in order.

    Examples are batched by task: a batch runs until its longest answer ends, so short replies are not held up
    by long understanding answers. With `labels_only` each answer stops once it has given its labels
    (`answer.labels_given`), wherever in the answer they are."""
    import torch

    from pallm.train.collate import prompt_inputs

    model, tok = speech.model, speech.processor.tokenizer
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    order = sorted(range(len(examples)), key=lambda k: str(examples[k].get("task", "")))
    texts: list[str] = []
    try:
        for start in range(0, len(order), batch_size):
            batch = [examples[k] for k in order[start : start + batch_size]]
            enc = prompt_inputs(speech.processor, [e["prompt"] for e in batch], [e["audio"] for e in batch])
            enc = {k: v.to(device, dtype) if k == "input_features" else v.to(device) for k, v in enc.items()}
            stop = [_LabelsGiven(tok, [bool(e["emotion"]) for e in batch])] if labels_only else None
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, stopping_criteria=stop,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
            texts += tok.batch_decode(ids[:, enc["input_ids"].size(1) :], skip_special_tokens=True)
    finally:
        model.train(was_training)
    out = [""] * len(examples)
    for k, text in zip(order, texts, strict=True):
        out[k] = text
    return out


class _LabelsGiven:
    """A stopping criterion (transformers' protocol): which answers of the batch have given their labels.

    It is called after each new token; the answers start where the ids were on the first call, less that
    token, since a model generating from embeddings (the offline backbone) passes the new tokens only."""

    def __init__(self, tokenizer: Any, emotion: Sequence[bool]) -> None:
        self.tokenizer, self.emotion, self.start = tokenizer, list(emotion), None

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        if self.start is None:
            self.start = input_ids.size(1) - 1
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        done = [labels_given(t, e) for t, e in zip(texts, self.emotion, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def answer_rows(
    examples: Sequence[dict[str, Any]], texts: Sequence[str], labels_only: bool = False
) -> list[dict[str, Any]]:
    """One row per example: its gold labels and what the system said (parsed where it is an understanding;
    with `labels_only`, answers cut after their labels are read without a reasoning)."""
    rows = []
    for e, text in zip(examples, texts, strict=True):
        parsed = parse_understanding(text, need_reasoning=not labels_only) if e["task"] == UNDERSTAND else None
        rows.append({
            "id": e["id"], "corpus": e["corpus"], "split": e["split"], "task": e["task"], "text": text,
            "sentiment": e["sentiment"], "emotion": e["emotion"],
            "pred_sentiment": parsed.sentiment if parsed else None, "pred_emotion": parsed.emotion if parsed else None,
            "reply": e["reply"], "words_only_reply": e["words_only_reply"],
        })  # fmt: skip
    return rows


def label_answer(reasoning: str, sentiment: str | None, emotion: str | None) -> str:
    """A classifier's labels written as an understanding answer, so baselines are scored by the same code."""
    return f"Sentiment: {sentiment}\nEmotion: {emotion}\nReasoning: {reasoning}\nCues: none"


def words_only_rows(examples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The words-only baseline's rows: the lexical probe's emotion and its sentiment, the words-only reply."""
    texts = []
    for e in examples:
        if e["task"] == REPLY:
            texts.append(e["words_only_reply"] or "")
            continue
        label = e.get("words_only_label")
        try:
            sentiment = map_label("*", label).sentiment if label else None
        except UnknownLabel:
            sentiment = None
        texts.append(label_answer("from the words alone.", sentiment, label))
    return answer_rows(examples, texts)


def swap_permutation(labels: Sequence[str | None], seed: int) -> list[int]:
    """A seeded permutation with no fixed point (for two or more items) that gives each item a partner of another
    label wherever the label counts allow it.

    The items are laid out by label (labels and the items within each in a seeded random order) and each takes
    the item `m` places further round the circle, `m` the size of the largest label: with `m <= n/2` every
    partner has another label, and otherwise only the fewest possible, `2m - n`, share one.
    """
    n = len(labels)
    if n < 2:
        return list(range(n))
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for k, label in enumerate(labels):
        by_label.setdefault(str(label), []).append(k)
    groups = sorted(by_label.values(), key=len, reverse=True)  # the largest first: it must not meet itself
    for g in groups:
        rng.shuffle(g)
    rest = groups[1:]
    rng.shuffle(rest)
    order = [k for g in [groups[0], *rest] for k in g]
    shift = len(groups[0]) if len(groups[0]) < n else 1
    out = [0] * n
    for pos, k in enumerate(order):
        out[k] = order[(pos + shift) % n]
    return out


def swap_audio(examples: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The understanding examples with each clip's audio swapped for another's of the same corpus and split
    (`swap_permutation` over the emotion, else the sentiment); `swapped_from` names the clip heard."""
    rows = [e for e in examples if e["task"] == UNDERSTAND]
    groups: dict[tuple[str, str], list[int]] = {}
    for k, e in enumerate(rows):
        groups.setdefault((e["corpus"], e["split"]), []).append(k)
    out = list(rows)
    for members in groups.values():
        perm = swap_permutation([rows[k]["emotion"] or rows[k]["sentiment"] for k in members], seed)
        for k, partner in zip(members, perm, strict=True):
            src = rows[members[partner]]
            out[k] = {**rows[k], "audio": src["audio"], "swapped_from": src["id"]}
    return out


def score_rows(rows: Sequence[dict[str, Any]], scorer: ReplySimilarityReward | None, seed: int = 0) -> dict[str, Any]:
    """The metrics of one system's rows: per (corpus, split), sentiment and emotion scores (intervals drawn from
    `seed`) and reply scores."""
    understand = [r for r in rows if r["task"] == UNDERSTAND]
    out: dict[str, Any] = {"sentiment": {}, "emotion": {}, "reply": {}}
    for key, scores in score_groups(understand, "sentiment", "pred_sentiment", labels=SENTIMENTS, seed=seed).items():
        out["sentiment"]["/".join(key)] = asdict(scores)
    # A real emotion that no clip of a group has is a wrong answer, not an invalid one: it gets a column.
    emotions = sorted({r["emotion"] for r in understand if r["emotion"]}
                      | {r["pred_emotion"] for r in understand if r["pred_emotion"] in EMOTIONS})  # fmt: skip
    for key, scores in score_groups(understand, "emotion", "pred_emotion", labels=emotions, seed=seed).items():
        out["emotion"]["/".join(key)] = asdict(scores)
    replies = [r for r in rows if r["task"] == REPLY and r["reply"]]
    if scorer is not None and replies:
        texts = [r["text"] for r in replies]
        to_teacher = scorer.similarities(texts, [r["reply"] for r in replies])
        to_words = scorer.similarities(texts, [r["words_only_reply"] or "" for r in replies])
        groups: dict[str, list[tuple[float, float]]] = {}
        for r, t, w in zip(replies, to_teacher, to_words, strict=True):
            groups.setdefault(f"{r['corpus']}/{r['split']}", []).append((t, w))
        for key, pairs in sorted(groups.items()):
            out["reply"][key] = {
                "n": len(pairs),
                "sim_teacher": mean(t for t, _ in pairs),
                "sim_words_only": mean(w for _, w in pairs),
                "margin": mean(t - w for t, w in pairs),
            }
    return out
