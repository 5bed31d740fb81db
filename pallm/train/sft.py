"""Stage 1: supervised fine-tuning on both tasks with TRL's SFTTrainer and the audio collator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pallm.model import SpeechLM
from pallm.train.checkpoints import last_checkpoint
from pallm.train.collate import AudioCollator
from pallm.train.config import SFTSettings


def _trainer_class() -> type:
    from transformers import Trainer
    from trl import SFTTrainer

    class AudioSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss comes from the model's own forward (audio features in, labels masked by the
        collator). TRL's fused LM head expects a text backbone it can call without the audio, so it is not used."""

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:  # fmt: skip
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return AudioSFTTrainer


def sft_args(cfg: SFTSettings, out: Path, seed: int, bf16: bool, checkpointing: bool = False) -> Any:
    """TRL's SFTConfig for our examples: keep every column (the collator reads audio), skip TRL's tokenising."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, warmup_ratio=cfg.warmup_ratio, lr_scheduler_type="cosine",
        logging_steps=1, save_steps=cfg.save_steps, save_total_limit=2, save_only_model=False,
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
        report_to=[], seed=seed, bf16=bf16, dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=checkpointing,
    )  # fmt: skip


def sft_trainer(
    speech: SpeechLM, train: list[dict[str, Any]], cfg: SFTSettings, out: Path, seed: int = 0,
    checkpointing: bool = False,
) -> Any:  # fmt: skip
    """The SFT trainer of `speech.model` on `train` (checkpoints to `out`); `checkpointing`: gradient
    checkpointing (less memory, more compute)."""
    import torch
    from datasets import Dataset

    bf16 = next(speech.model.parameters()).dtype == torch.bfloat16
    return _trainer_class()(
        model=speech.model, args=sft_args(cfg, out, seed, bf16, checkpointing), train_dataset=Dataset.from_list(train),
        processing_class=speech.processor, data_collator=AudioCollator(speech.processor),
    )  # fmt: skip


def train_sft(
    speech: SpeechLM, train: list[dict[str, Any]], cfg: SFTSettings, out: Path, seed: int = 0,
    checkpointing: bool = False,
) -> list[dict]:  # fmt: skip
    """Fine-tune `speech.model` in place on `train` (`sft_trainer`); a rerun resumes from the last checkpoint in
    `out`. Returns the log history (loss per step)."""
    trainer = sft_trainer(speech, train, cfg, out, seed, checkpointing)
    trainer.train(resume_from_checkpoint=last_checkpoint(out))
    return list(trainer.state.log_history)
