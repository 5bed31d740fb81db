"""Per-speaker standardisation of encoder frames: each clip's frames minus its speaker's mean frame, over its
speaker's spread, per dimension.

Emotion lives in how a voice departs from its own habit (a high pitch for this speaker), and a frozen encoder's
frames carry the speaker's identity far more strongly than the departure. On RAVDESS (actors 1-16 fit, all 240
clips of actors 17-20 scored) the encoder-probe baseline (Whisper base's frames pooled into their mean and
standard deviation over time, a logistic regression) reaches emotion UA 0.668 and sentiment UA 0.799; with the
pooled features standardised per speaker first, 0.715 and 0.859. The statistics use no labels: like the
acoustic baseline's speaker z-scores they come from every clip of the speaker that the dataset holds,
evaluation speakers included.

Clips are looked up by the encoder's cache key (a hash of the audio), so everything that hands the processor a
clip (the collator, generation, GRPO's rollouts, the swapped-audio test) gets its speaker's statistics with no
speaker id passed along.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

MIN_STD = 1e-4  # a dimension that never varies for a speaker is left centred, not blown up


@dataclass
class SpeakerNorm:
    """Each speaker's frame mean and standard deviation, and which speaker each clip (by key) belongs to."""

    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    speaker_of: dict[str, str] = field(default_factory=dict)

    def apply(self, key: str, frames: np.ndarray) -> np.ndarray:
        """`frames` (time, dim) of the clip with `key`, standardised by its speaker's statistics."""
        speaker = self.speaker_of.get(key)
        if speaker is None:
            raise KeyError(
                "this model standardises frames per speaker and the clip's speaker is unknown: fit the speakers "
                "on the clips first (pallm.model.offline.fit_speakers)"
            )
        mean, std = self.stats[speaker]
        return ((frames - mean) / std).astype(np.float32)


def fit_speaker_norm(
    encode: Callable[[list[np.ndarray]], list[np.ndarray]], key: Callable[[np.ndarray], str],
    clips: Iterable[tuple[str, np.ndarray]], batch: int = 32,
) -> SpeakerNorm:  # fmt: skip
    """Every speaker's statistics over the frames of all its clips (`(speaker, samples)` pairs), through `encode`
    (the encoder, cached) `batch` clips at a time; `key` names each clip as the processor will look it up."""
    sums: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    norm = SpeakerNorm()
    pending: list[tuple[str, np.ndarray]] = []

    def flush(items: Sequence[tuple[str, np.ndarray]]) -> None:
        for (speaker, clip), frames in zip(items, encode([c for _, c in items]), strict=True):
            frames = frames.astype(np.float64)
            total, squares, n = sums.get(speaker, (0.0, 0.0, 0))
            sums[speaker] = (total + frames.sum(axis=0), squares + (frames**2).sum(axis=0), n + len(frames))
            norm.speaker_of[key(clip)] = speaker

    for item in clips:
        pending.append(item)
        if len(pending) == batch:
            flush(pending)
            pending = []
    if pending:
        flush(pending)
    for speaker, (total, squares, n) in sums.items():
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
        norm.stats[speaker] = (mean.astype(np.float32), np.maximum(std, MIN_STD).astype(np.float32))
    return norm
