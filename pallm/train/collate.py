"""Batches of chat examples with audio for the speech LLM: processor inputs, and labels for SFT."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import soundfile as sf
import torch

from pallm.model.speech_lm import SAMPLE_RATE

IGNORE = -100  # the label of a position the loss skips


def waveform(audio: bytes) -> np.ndarray:
    """The float32 samples of a row's 16 kHz mono WAV bytes."""
    samples, rate = sf.read(io.BytesIO(audio), dtype="float32", always_2d=False)
    if rate != SAMPLE_RATE:
        raise ValueError(f"expected {SAMPLE_RATE} Hz audio, got {rate} Hz")
    return samples


def prompt_inputs(processor: Any, prompts: Sequence[list[dict]], audio: Sequence[bytes], **kwargs: Any) -> Any:
    """Processor inputs (ids, masks, audio features) for chat prompts, ready for generation (left padding)."""
    texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    processor.tokenizer.padding_side = "left"
    return _encode(processor, texts, audio, **kwargs)


def _encode(processor: Any, texts: Sequence[str], audio: Sequence[bytes], **kwargs: Any) -> Any:
    return processor(
        text=list(texts), audio=[waveform(a) for a in audio], sampling_rate=SAMPLE_RATE, padding=True,
        return_tensors="pt", **kwargs,
    )  # fmt: skip


class AudioCollator:
    """SFT collator: prompt + completion through the processor; the loss sees only the completion's tokens
    (labels are -100 on the system and user turns, the audio placeholders and the padding). An example marked
    `answer_prefix` trains on its completion's text without the end of the turn: the answer goes on."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tok = self.processor.tokenizer
        tok.padding_side = "right"
        prompts = [self.processor.apply_chat_template(e["prompt"], add_generation_prompt=True, tokenize=False)
                   for e in examples]  # fmt: skip
        fulls = [self.processor.apply_chat_template(e["prompt"] + e["completion"], tokenize=False) for e in examples]
        batch = _encode(self.processor, fulls, [e["audio"] for e in examples])
        # The prompt is a prefix of the full text and the audio expands the same in both, so the answer is the
        # last (full - prompt) text tokens of each row: no second pass of the audio through the processor.
        full_lengths = [len(ids) for ids in tok(fulls)["input_ids"]]
        prompt_text_lengths = [len(ids) for ids in tok(prompts)["input_ids"]]
        answer_lengths = torch.tensor([f - p for f, p in zip(full_lengths, prompt_text_lengths, strict=True)])
        prompt_lengths = batch["attention_mask"].sum(dim=1) - answer_lengths
        labels = batch["input_ids"].clone()
        positions = torch.arange(labels.size(1)).expand_as(labels)
        labels[positions < prompt_lengths[:, None]] = IGNORE
        labels[batch["attention_mask"] == 0] = IGNORE
        ends = batch["attention_mask"].sum(dim=1)
        for k, e in enumerate(examples):
            if e.get("answer_prefix"):
                answer = prompts[k] + e["completion"][0]["content"][0]["text"]
                turn_end = full_lengths[k] - len(tok(answer)["input_ids"])
                labels[k, ends[k] - turn_end : ends[k]] = IGNORE
        batch["labels"] = labels
        return dict(batch)
