"""Stage 1: supervised fine-tuning on both tasks with TRL's SFTTrainer and the audio collator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pallm.model import SpeechLM
from pallm.train.checkpoints import last_checkpoint
from pallm.train.collate import IGNORE, AudioCollator
from pallm.train.config import StageSettings


def answer_span(labels: Any) -> tuple[int, int] | None:
    """The positions whose next token is an answer token in some row of the batch, as [first, last): the only
    positions the loss needs logits for (prompt and audio, most of a sequence, come before). None when no row
    has an answer token."""
    scored = (labels[:, 1:] != IGNORE).any(dim=0).nonzero()
    return (int(scored[0]), int(scored[-1]) + 1) if len(scored) else None


def _trainer_class() -> type:
    import inspect

    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    class AudioSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss comes from the model's forward (audio features in, labels masked by the collator).
        TRL's fused LM head expects a text backbone it can call without the audio, so it is not used. Where the
        forward takes `logits_to_keep` (the offline backbone), the LM head runs over `answer_span` only, so the
        (batch, positions, 49,152) logits and their gradient leave out the prompt and the audio."""

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:  # fmt: skip
            span = answer_span(inputs["labels"])
            base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft
            if span is None or "logits_to_keep" not in inspect.signature(base.forward).parameters:
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            first, last = span
            rest = {k: v for k, v in inputs.items() if k != "labels"}
            keep = torch.arange(first, last, device=inputs["labels"].device)
            outputs = model(**rest, use_cache=False, logits_to_keep=keep)
            targets = inputs["labels"][:, first + 1 : last + 1]
            loss = torch.nn.functional.cross_entropy(outputs.logits.float().flatten(0, 1), targets.flatten(),
                                                     ignore_index=IGNORE, reduction="sum")  # fmt: skip
            # Like the model's own loss: over the tokens of every accumulated micro-batch where the Trainer
            # counts them (it then leaves the accumulation to the loss), else over this batch's.
            counted = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            loss = loss / (num_items_in_batch if counted else (targets != IGNORE).sum().clamp(min=1))
            return (loss, outputs) if return_outputs else loss

    return AudioSFTTrainer


def computes_in_bf16(speech: SpeechLM) -> bool:
    """Whether a trainer of `speech` runs in bfloat16: its weights are, or it trains in mixed precision."""
    import torch

    return speech.mixed_precision == "bf16" or next(speech.model.parameters()).dtype == torch.bfloat16


def precision_args(bf16: bool) -> dict[str, Any]:
    """The Trainer's precision arguments, with accelerate's environment pinned to them: transformers writes
    `ACCELERATE_MIXED_PRECISION=bf16` into the process when a bf16 trainer is configured and never takes it
    back, so a later float32 trainer in the same process would otherwise train under bf16 autocast. Without a
    GPU, bf16 also needs `use_cpu` (transformers checks for a bf16 GPU otherwise)."""
    import os

    import torch

    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if bf16 else "no"
    return {"bf16": bf16, "use_cpu": bf16 and not torch.cuda.is_available()}


def sft_args(cfg: StageSettings, out: Path, seed: int, bf16: bool, checkpointing: bool = False) -> Any:
    """TRL's SFTConfig for our examples: keep every column (the collator reads audio), skip TRL's tokenising."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, warmup_ratio=cfg.warmup_ratio, lr_scheduler_type="cosine",
        logging_steps=1, save_steps=cfg.save_steps, save_total_limit=2, save_only_model=False,
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
        report_to=[], seed=seed, dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=checkpointing, **precision_args(bf16),
    )  # fmt: skip


def sft_trainer(
    speech: SpeechLM, train: list[dict[str, Any]], cfg: StageSettings, out: Path, seed: int = 0,
    checkpointing: bool = False,
) -> Any:  # fmt: skip
    """The SFT trainer of `speech.model` on `train` (checkpoints to `out`); `checkpointing`: gradient
    checkpointing (less memory, more compute)."""
    from datasets import Dataset

    bf16 = computes_in_bf16(speech)
    return _trainer_class()(
        model=speech.model, args=sft_args(cfg, out, seed, bf16, checkpointing), train_dataset=Dataset.from_list(train),
        processing_class=speech.processor, data_collator=AudioCollator(speech.processor),
    )  # fmt: skip


def train_sft(
    speech: SpeechLM, train: list[dict[str, Any]], cfg: StageSettings, out: Path, seed: int = 0,
    checkpointing: bool = False,
) -> list[dict]:  # fmt: skip
    """Fine-tune `speech.model` in place on `train` (`sft_trainer`); a rerun resumes from the last checkpoint in
    `out`. Returns the log history (loss per step)."""
    trainer = sft_trainer(speech, train, cfg, out, seed, checkpointing)
    trainer.train(resume_from_checkpoint=last_checkpoint(out))
    return list(trainer.state.log_history)
