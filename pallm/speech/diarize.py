"""Speaker turns from a pyannote speaker-diarization pipeline (through whisperx), and cutting timed words at them.

whisperx and pyannote are imported inside the functions, so this module (and cut_at_turns) imports without them.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pallm.schema import SAMPLE_RATE
from pallm.speech.models import looks_like_path
from pallm.speech.words import Turn, Word

if TYPE_CHECKING:
    from whisperx.diarize import DiarizationPipeline

PIPELINE_CONFIG = "config.yaml"  # pyannote's AssetFileName.Pipeline


@dataclass(frozen=True)
class Diarizer:
    """A loaded pyannote diarization pipeline, wrapped by whisperx."""

    pipeline: DiarizationPipeline
    name: str  # the hub name or the local config.yaml it came from
    device: str


def load_diarizer(model: str, *, token: str | None = None, device: str = "cpu") -> Diarizer:
    """Load a pyannote speaker-diarization pipeline: a local config.yaml (or a folder holding one) or a hub name.

    `token` is the Hugging Face token for gated hub pipelines; it is not needed for local ones. A local path
    without its config.yaml raises FileNotFoundError naming it (pyannote would take the path for a hub name).
    """
    from whisperx.diarize import DiarizationPipeline

    name = pipeline_source(model)
    # whisperx.diarize.DiarizationPipeline passes the name straight to pyannote's Pipeline.from_pretrained,
    # which reads a local config.yaml and resolves its "$model/..." entries next to it.
    pipeline = DiarizationPipeline(model_name=name, token=token, device=device)
    return Diarizer(pipeline=pipeline, name=name, device=device)


def pipeline_source(model: str) -> str:
    """The local config.yaml `model` names (checked to exist), or `model` itself when it is a hub name."""
    path = Path(model).expanduser()
    if looks_like_path(model) or path.suffix in (".yaml", ".yml"):
        config = path / PIPELINE_CONFIG if path.is_dir() or path.suffix not in (".yaml", ".yml") else path
        if not config.is_file():
            raise FileNotFoundError(errno.ENOENT, "pyannote pipeline config not found", str(config))
        return str(config)
    return model


def speaker_turns(
    diarizer: Diarizer,
    audio: np.ndarray,
    *,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
) -> list[Turn]:
    """Diarize `audio` (float32 mono, 16 kHz) into speaker turns sorted by start, clipped to the audio.

    Speakers keep the pipeline's labels (SPEAKER_00, ...). Turns may overlap where the pipeline hears two
    speakers at once.
    """
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"audio must be mono (one dimension), got shape {samples.shape}")
    duration = len(samples) / SAMPLE_RATE
    frame = diarizer.pipeline(samples, min_speakers=min_speakers, max_speakers=max_speakers)
    turns = []
    for start, end, speaker in zip(frame["start"], frame["end"], frame["speaker"], strict=True):
        # pyannote's frames can reach a few milliseconds past the last sample.
        start_s = min(max(float(start), 0.0), duration)
        end_s = min(max(float(end), 0.0), duration)
        if end_s > start_s:
            turns.append(Turn(start=start_s, end=end_s, speaker=str(speaker)))
    return sorted(turns, key=lambda t: (t.start, t.end, t.speaker))


def cut_at_turns(words: Sequence[Word], turns: Sequence[Turn]) -> list[tuple[Turn, list[Word]]]:
    """Split `words` among speaker `turns`: each turn that received words, with its words.

    Each word goes to the turn it overlaps most, or to the nearest turn when it overlaps none (ties: the earlier
    turn). Turns that follow each other (sorted by start) with the same speaker are merged into one spanning both.
    Returns the merged turns that have words, sorted by start, each with its words in their given order; every
    word lands in exactly one turn. With no turns, nothing comes back.
    """
    ordered = sorted(turns, key=lambda t: (t.start, t.end, t.speaker))
    merged: list[Turn] = []
    merged_index: list[int] = []  # for each turn in `ordered`, the merged turn it became part of
    for turn in ordered:
        if merged and merged[-1].speaker == turn.speaker:
            last = merged[-1]
            merged[-1] = Turn(start=last.start, end=max(last.end, turn.end), speaker=turn.speaker)
        else:
            merged.append(turn)
        merged_index.append(len(merged) - 1)
    if not merged:
        return []
    assigned: list[list[Word]] = [[] for _ in merged]
    for word in words:
        assigned[merged_index[_best_turn(word, ordered)]].append(word)
    return [(turn, group) for turn, group in zip(merged, assigned, strict=True) if group]


def _best_turn(word: Word, turns: Sequence[Turn]) -> int:
    """Index of the turn overlapping `word` most, else of the nearest one; the first of equals wins.

    Without overlap, min(ends) - max(starts) is minus the gap between word and turn, so one argmax does both.
    """
    overlaps = [min(word.end, t.end) - max(word.start, t.start) for t in turns]
    return max(range(len(turns)), key=lambda k: overlaps[k])
