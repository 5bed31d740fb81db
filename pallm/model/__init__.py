"""Speech LLM builders. Each family is one function from a `ModelConfig` to a `SpeechLM`; `build` picks it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pallm.model.speech_lm import SpeechLM
from pallm.train.config import ModelConfig


def build(cfg: ModelConfig, checkpoint: Path | None = None, seed: int = 0) -> SpeechLM:
    """The model `cfg` describes; from `checkpoint` (a folder a stage saved) when given."""
    from pallm.model import offline, qwen2_audio

    builders: dict[str, Callable[..., SpeechLM]] = {"qwen2-audio": qwen2_audio.build, "offline": offline.build}
    speech = builders[cfg.family](cfg, checkpoint=checkpoint, seed=seed)
    speech.mixed_precision = cfg.mixed_precision
    return speech


def frozen_encoder(cfg: ModelConfig) -> Callable[[list[np.ndarray]], list[np.ndarray]] | None:
    """The audio encoder that `cfg`'s model receives its frames from and never trains, as clips -> frames; None
    where the encoder trains with the model (Qwen2-Audio as configured here), so no probe of it is fixed."""
    if cfg.family == "offline":
        from pallm.model.offline import frame_encoder

        return frame_encoder(cfg)
    return None


__all__ = ["SpeechLM", "build", "frozen_encoder"]
