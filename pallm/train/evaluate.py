"""Evaluation of one system on held-out examples: its answers, then the field's metrics for both tasks.

Understanding: WA, UA, macro-F1 and the confusion matrix for sentiment and for emotion, per corpus and split
(`pallm.train.metrics`). Replies: similarity to the teacher's tone-aware reply and to the words-only reply,
and the margin between them (`ReplySimilarityReward`). The words-only baseline answers from the transcript
alone: the lexical probe's out-of-fold emotion (and its sentiment), and the words-only reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from statistics import mean
from typing import Any

from pallm.labels import UnknownLabel, map_label
from pallm.train.answer import SENTIMENTS, parse_understanding
from pallm.train.metrics import score_groups
from pallm.train.rewards import REPLY, UNDERSTAND, ReplySimilarityReward


def generate(speech: Any, examples: Sequence[dict[str, Any]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers of `speech` to the examples' prompts (audio included), in order."""
    import torch

    from pallm.train.collate import prompt_inputs

    model, tok = speech.model, speech.processor.tokenizer
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out: list[str] = []
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            enc = prompt_inputs(speech.processor, [e["prompt"] for e in batch], [e["audio"] for e in batch])
            enc = {k: v.to(device, dtype) if k == "input_features" else v.to(device) for k, v in enc.items()}
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
            out += tok.batch_decode(ids[:, enc["input_ids"].size(1) :], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return out


def answer_rows(examples: Sequence[dict[str, Any]], texts: Sequence[str]) -> list[dict[str, Any]]:
    """One row per example: its gold labels and what the system said (parsed where it is an understanding)."""
    rows = []
    for e, text in zip(examples, texts, strict=True):
        parsed = parse_understanding(text) if e["task"] == UNDERSTAND else None
        rows.append({
            "id": e["id"], "corpus": e["corpus"], "split": e["split"], "task": e["task"], "text": text,
            "sentiment": e["sentiment"], "emotion": e["emotion"],
            "pred_sentiment": parsed.sentiment if parsed else None, "pred_emotion": parsed.emotion if parsed else None,
            "reply": e["reply"], "words_only_reply": e["words_only_reply"],
        })  # fmt: skip
    return rows


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
        texts.append(f"Reasoning: from the words alone.\nCues: none\nSentiment: {sentiment}\nEmotion: {label}")
    return answer_rows(examples, texts)


def score_rows(rows: Sequence[dict[str, Any]], scorer: ReplySimilarityReward | None) -> dict[str, Any]:
    """The metrics of one system's rows: per (corpus, split), sentiment and emotion scores and reply scores."""
    understand = [r for r in rows if r["task"] == UNDERSTAND]
    out: dict[str, Any] = {"sentiment": {}, "emotion": {}, "reply": {}}
    for key, scores in score_groups(understand, "sentiment", "pred_sentiment", labels=SENTIMENTS).items():
        out["sentiment"]["/".join(key)] = asdict(scores)
    emotions = sorted({r["emotion"] for r in understand if r["emotion"]})
    for key, scores in score_groups(understand, "emotion", "pred_emotion", labels=emotions).items():
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
