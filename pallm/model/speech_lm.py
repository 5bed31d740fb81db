"""What every builder returns: the model, its processor, and how to save both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: One chat template for every family (ChatML, the audio as a placeholder the processor expands). Qwen2-Audio's
#: own template counts audio parts only when they carry the audio under an `audio` key; the training examples
#: keep audio in a column, so the parts are bare `{"type": "audio"}`.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
AUDIO_TOKENS = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")
SAMPLE_RATE = 16_000


@dataclass
class SpeechLM:
    """A speech LLM ready to train: `model(input_ids, attention_mask, input_features, feature_attention_mask)`
    and `processor(text=..., audio=..., ...)` in the Qwen2-Audio convention, whatever the family."""

    model: Any  # transformers PreTrainedModel, or a peft PeftModel around one
    processor: Any  # a transformers ProcessorMixin with `tokenizer` and `apply_chat_template`
    family: str
    mixed_precision: str = "no"  # "bf16": the trainers compute under bfloat16 autocast (`ModelConfig`)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def save(self, path: Path) -> None:
        """Save full weights (LoRA merged in) and the processor, so the next stage or a user loads one folder."""
        model = self.model
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        self.processor.save_pretrained(path)
