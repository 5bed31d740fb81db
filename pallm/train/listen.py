"""Run a trained speech LLM on audio files: for each clip, its reasoning, cues, sentiment and emotion (the
understanding task) and a reply to the speaker (the reply task), with the prompts it was trained on.

Clips are read by the audio stage a build uses (`pallm.audio.stage`: libsndfile, else ffmpeg; mixed down and
resampled to 16 kHz; empty, silent, too short or too long clips refused), so any common audio format goes in.
A file that cannot be read is reported on its own; the other clips are still answered. A model that
standardises its frames per speaker (`model.speaker_norm`) takes the clips of one call as one speaker's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pallm.audio.decode import DecodeError
from pallm.audio.stage import process_audio
from pallm.config import AudioConfig
from pallm.corpora.base import SOURCE_KEY, ItemError
from pallm.labels import EMOTIONS
from pallm.train.answer import parse_understanding
from pallm.train.checkpoints import finished
from pallm.train.config import ModelConfig, TrainConfig
from pallm.train.data import LABELS_FILE, REPLY_PROMPT, chat_prompt, understand_prompt
from pallm.train.steps import CONFIG_FILE, inference_model, stage_model

LIMITS = AudioConfig(max_duration_s=30.0)  # Whisper's window: what the audio side of every family hears at once
FAMILIES = {"pallm_offline_speech": "offline", "qwen2_audio": "qwen2-audio"}


@dataclass(frozen=True)
class Model:
    """A saved model folder and how to build it."""

    path: Path
    config: ModelConfig
    max_new_tokens: int


def resolve_model(path: Path, max_new_tokens: int | None = None) -> Model:
    """A run folder (its final model: after RL, else after SFT) or a saved model folder. Answers are at most
    `max_new_tokens` long: by default the run's evaluation setting, else 128."""
    if (path / CONFIG_FILE).is_file() and "fingerprint" in (record := json.loads((path / CONFIG_FILE).read_text())):
        cfg = TrainConfig.model_validate(record["config"])
        for stage in ("rl", "sft"):
            if finished(path / stage):
                return Model(stage_model(path, stage), inference_model(cfg.model),
                             max_new_tokens or cfg.eval.max_new_tokens)  # fmt: skip
        raise ValueError(f"{path} is a training run with no finished model yet (no sft/ or rl/ done)")
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path} is neither a training run nor a saved model folder (no config.json)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"{path} holds a {model_type!r} model; pallm listen runs {', '.join(FAMILIES)} models")
    return Model(path, ModelConfig(family=FAMILIES[model_type]), max_new_tokens or 128)


def prompt_emotions(model_dir: Path) -> list[str]:
    """The emotions the model was trained to choose from (saved beside it), else the label map's."""
    saved = model_dir / LABELS_FILE
    if saved.is_file():
        return list(json.loads(saved.read_text())["emotions"])
    return [e for e in EMOTIONS if e not in ("other", "unknown")]


def read_clip(path: Path) -> bytes:
    """A clip as the 16 kHz mono WAV bytes the models take, through the audio stage a build uses (the same
    decoding, resampling and checks); DecodeError with the stage's reason when it cannot be."""
    try:
        return process_audio({SOURCE_KEY: str(path), "audio_path": str(path)}, LIMITS)["audio"]["bytes"]
    except ItemError as e:
        reason = str(e)
        if reason.startswith("too long"):  # the stage names its config field; here the limit is the model's
            reason = f"{reason.split(' > ')[0]}: the model hears at most {LIMITS.max_duration_s:g} s at once"
        raise DecodeError(reason) from None


def listen(model: Model, clips: Sequence[Path], batch_size: int = 8) -> Iterator[dict[str, Any]]:
    """One result per clip, in order: `{"path", "reasoning", "cues", "sentiment", "emotion", "reply"}`, or
    `{"path", "error"}` for a clip that cannot be read."""
    from pallm.model import build
    from pallm.model.offline import fit_speakers
    from pallm.train.collate import waveform
    from pallm.train.evaluate import generate

    audio: dict[int, bytes] = {}
    errors: dict[int, str] = {}
    for k, clip in enumerate(clips):
        try:
            audio[k] = read_clip(clip)
        except DecodeError as e:
            errors[k] = str(e)
    if audio:
        speech = build(model.config, checkpoint=model.path)
        # A model that standardises its frames per speaker takes the clips of one call as one speaker's.
        fit_speakers(speech, (("listen", waveform(a)) for a in audio.values()))
        understand = understand_prompt(prompt_emotions(model.path))
        asks = [{"prompt": chat_prompt(p), "audio": a} for a in audio.values() for p in (understand, REPLY_PROMPT)]
        texts = iter(generate(speech, asks, model.max_new_tokens, batch_size))
    for k, clip in enumerate(clips):
        if k in errors:
            yield {"path": str(clip), "error": errors[k]}
            continue
        said, reply = next(texts), next(texts)
        parsed = parse_understanding(said)
        yield {
            "path": str(clip),
            "reasoning": parsed.reasoning if parsed else said.strip(),
            "cues": list(parsed.cues) if parsed else [],
            "sentiment": parsed.sentiment if parsed else None,
            "emotion": parsed.emotion if parsed else None,
            "reply": reply.strip(),
            "parsed": parsed is not None,
        }
