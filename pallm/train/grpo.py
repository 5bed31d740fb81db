"""Stage 2: multi-task GRPO with the audio in the prompt.

TRL's `GRPOTrainer` knows images, not audio. `AudioGRPOTrainer` adds the audio path: it builds the prompts
with the processor (audio expanded into its placeholder tokens, log-mel features beside them), generates with
the features, carries them in the batch next to the completions, and passes them whenever it computes
log-probabilities (policy, old policy, reference). Everything else — groups, advantages, KL, clipping,
logging — is TRL's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from pallm.model import SpeechLM
from pallm.train.checkpoints import last_checkpoint
from pallm.train.collate import prompt_inputs
from pallm.train.config import RLSettings
from pallm.train.sft import computes_in_bf16, precision_args

AUDIO_FIELDS = ("input_features", "feature_attention_mask")


class AudioGRPOTrainer(GRPOTrainer):
    """GRPO for speech LLMs in the Qwen2-Audio convention. The dataset needs an `audio` column (WAV bytes).

    The audio of the batch in flight is kept on the trainer between TRL's calls (`_audio`): TRL's methods
    pass image fields by name and nothing else, so this is where the audio rides.
    """

    _audio: dict[str, torch.Tensor] | None = None
    _rollout_audio: list[bytes] | None = None

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        # TRL keeps a processor model from sampling its image placeholder (`config.image_token_id`), whose
        # features would not match; here the placeholder is the audio token. Set only while TRL reads it.
        config = model.config
        config.image_token_id = config.audio_token_index
        try:
            super().__init__(model, *args, **kwargs)
        finally:
            del config.image_token_id

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._rollout_audio = [x["audio"] for x in inputs]
        batch = super()._generate_and_score_completions(inputs)
        # Row-aligned with the completions, so TRL's shuffling and splitting keep them together.
        batch.update(self._audio or {})
        self._rollout_audio = None
        return batch

    def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict[str, torch.Tensor]]:
        if self._rollout_audio is None or len(self._rollout_audio) != len(prompts):
            raise RuntimeError("AudioGRPOTrainer needs the batch's audio: the dataset must have an `audio` column")
        enc = prompt_inputs(self.processing_class, prompts, self._rollout_audio)
        ids = [row[mask.bool()].tolist() for row, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True)]
        dtype = next(self.model.parameters()).dtype
        self._audio = {
            "input_features": enc["input_features"].to(self.accelerator.device, dtype),
            "feature_attention_mask": enc["feature_attention_mask"].to(self.accelerator.device),
        }
        return ids, None, dict(self._audio)

    def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
        # Accelerate autocasts the model's forward, not `generate`, which runs through the language model's own;
        # the log-mel features are computed before this, outside autocast.
        with self.accelerator.autocast():
            return super()._generate_single_turn(*args, **kwargs)

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        self._audio = {k: inputs[k] for k in AUDIO_FIELDS}
        return super()._compute_loss(model, inputs)

    def _get_per_token_logps_and_entropies(
        self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
        batch_size: int | None = None, compute_entropy: bool = False, compute_aux_loss: bool = False, **_: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, None]:  # fmt: skip
        """Log-probabilities (and entropies) of the completion tokens, with the audio features in the forward."""
        if self._audio is None:
            raise RuntimeError("no audio features for this batch")
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = start + batch_size
            with self.accelerator.autocast():
                logits = model(
                    input_ids=input_ids[start:end], attention_mask=attention_mask[start:end], use_cache=False,
                    **{k: v[start:end] for k, v in self._audio.items()},
                ).logits  # fmt: skip
            # Position t predicts token t + 1: the completion's logits end one before the sequence does.
            logits = logits[:, -logits_to_keep - 1 : -1].float() / self.temperature
            logps.append(selective_log_softmax(logits, input_ids[start:end, -logits_to_keep:]))
            if compute_entropy:
                entropies.append(entropy_from_logits(logits))
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None


def grpo_args(
    cfg: RLSettings, out: Path, seed: int, bf16: bool, weights: list[float], checkpointing: bool = False
) -> GRPOConfig:
    """TRL's GRPOConfig from our settings; columns stay (rewards read them), no external logging."""
    return GRPOConfig(
        output_dir=str(out), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, beta=cfg.beta, learning_rate=cfg.learning_rate, reward_weights=weights,
        logging_steps=1, save_steps=cfg.save_steps, save_total_limit=2, remove_unused_columns=False,
        report_to=[], seed=seed, dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=checkpointing, **precision_args(bf16),
    )  # fmt: skip


def grpo_trainer(
    speech: SpeechLM,
    train: list[dict[str, Any]],
    rewards: dict[str, Any],
    cfg: RLSettings,
    out: Path,
    seed: int = 0,
    checkpointing: bool = False,
) -> AudioGRPOTrainer:
    """The trainer for multi-task GRPO on `train` with the named reward functions, weighted by
    `cfg.reward_weights` (a reward weighted 0 or not named is left out)."""
    from datasets import Dataset

    unknown = set(cfg.reward_weights) - set(rewards)
    if unknown:
        raise ValueError(f"reward_weights names unknown rewards {sorted(unknown)}; known: {sorted(rewards)}")
    names = [n for n in rewards if cfg.reward_weights.get(n, 0) != 0]
    bf16 = computes_in_bf16(speech)
    return AudioGRPOTrainer(
        model=speech.model, reward_funcs=[rewards[n] for n in names],
        args=grpo_args(cfg, out, seed, bf16, [cfg.reward_weights[n] for n in names], checkpointing),
        train_dataset=Dataset.from_list(train), processing_class=speech.processor,
    )  # fmt: skip


def train_grpo(
    speech: SpeechLM,
    train: list[dict[str, Any]],
    rewards: dict[str, Any],
    cfg: RLSettings,
    out: Path,
    seed: int = 0,
    checkpointing: bool = False,
) -> list[dict]:
    """Multi-task GRPO (`grpo_trainer`); checkpoints go to `out` and a rerun resumes from the last. Returns the
    trainer's log history (rewards per step)."""
    trainer = grpo_trainer(speech, train, rewards, cfg, out, seed, checkpointing)
    trainer.train(resume_from_checkpoint=last_checkpoint(out))
    return list(trainer.state.log_history)
