"""RAVDESS (Livingstone & Russo, 2018): labels from file names `MM-VV-EE-II-SS-RR-AA.wav`.

Modality 03 is audio-only; vocal channel 01 speech, 02 song. Folds are speaker-independent groups
of four actors (actors 1-4 are fold 1, ... 21-24 fold 6), following EmoBox.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from pallm.corpora.base import CorpusAdapter, Quarantined, SplitOptions, audio_files, utterance

EMOTIONS = {1: "neutral", 2: "calm", 3: "happy", 4: "sad", 5: "angry", 6: "fearful", 7: "disgust", 8: "surprised"}
INTENSITIES = {1: "normal", 2: "strong"}
STATEMENTS = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
VOCAL_CHANNELS = {1: "speech", 2: "song"}
MODALITIES = {1: "audio-video", 2: "video-only", 3: "audio-only"}
# Song has no neutral-strong, no disgust nor surprised (RAVDESS README).
SONG_EMOTIONS = {1, 2, 3, 4, 5, 6}

_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")


class RavdessOptions(SplitOptions):
    """RAVDESS options: song is left out unless asked for."""

    include_song: bool = False
    test_folds: list[int] = Field(default_factory=lambda: [1])
    validation_folds: list[int] = Field(default_factory=lambda: [2])


def parse_name(stem: str) -> dict[str, int]:
    """Decode a RAVDESS file stem into its seven codes; ValueError says which code is wrong."""
    m = _NAME.match(stem)
    if not m:
        raise ValueError(f"file name {stem!r} is not MM-VV-EE-II-SS-RR-AA")
    modality, channel, emotion, intensity, statement, repetition, actor = map(int, m.groups())
    checks = (
        ("modality", modality, MODALITIES), ("vocal channel", channel, VOCAL_CHANNELS),
        ("emotion", emotion, EMOTIONS), ("intensity", intensity, INTENSITIES),
        ("statement", statement, STATEMENTS), ("repetition", repetition, {1: 0, 2: 0}),
        ("actor", actor, range(1, 25)),
    )  # fmt: skip
    for what, code, allowed in checks:
        if code not in allowed:
            raise ValueError(f"{what} code {code:02d} out of range in {stem!r}")
    if emotion == 1 and intensity == 2:
        raise ValueError(f"neutral has no strong intensity in RAVDESS ({stem!r})")
    if channel == 2 and emotion not in SONG_EMOTIONS:
        raise ValueError(f"RAVDESS song has no {EMOTIONS[emotion]} ({stem!r})")
    return dict(
        modality=modality, channel=channel, emotion=emotion, intensity=intensity,
        statement=statement, repetition=repetition, actor=actor,
    )  # fmt: skip


def scan(corpus_dir: Path, options: RavdessOptions) -> Iterator[dict[str, Any] | Quarantined]:
    """Yield one row per RAVDESS audio file under `corpus_dir` (any depth, e.g. `Actor_NN/`)."""
    for path in audio_files(corpus_dir):
        rel = path.relative_to(corpus_dir).as_posix()
        try:
            codes = parse_name(path.stem)
            if codes["modality"] == 2:
                raise ValueError("video-only file has no audio")
        except ValueError as e:
            yield Quarantined(None, "ravdess", rel, "ingest", str(e))
            continue
        if codes["channel"] == 2 and not options.include_song:
            continue
        fold = (codes["actor"] - 1) // 4 + 1
        yield utterance(
            corpus="ravdess",
            local_id=path.stem,
            source=path,
            corpus_dir=corpus_dir,
            emotion_native=EMOTIONS[codes["emotion"]],
            speaker=f"actor{codes['actor']:02d}",
            gender="male" if codes["actor"] % 2 else "female",
            split=options.split_for(fold),
            fold=fold,
            transcript_ref=STATEMENTS[codes["statement"]],
            intensity=INTENSITIES[codes["intensity"]],
            vocal_channel=VOCAL_CHANNELS[codes["channel"]],
            statement=codes["statement"],
            repetition=codes["repetition"],
        )


ADAPTER = CorpusAdapter(
    license_id="cc-by-nc-sa-4.0",
    name="ravdess",
    scan=scan,
    options=RavdessOptions,
    license="CC BY-NC-SA 4.0",
    homepage="https://zenodo.org/record/1188976",
    citation=(
        "Livingstone SR, Russo FA (2018). The Ryerson Audio-Visual Database of Emotional Speech and "
        "Song (RAVDESS). PLoS ONE 13(5): e0196391."
    ),
    description="24 actors saying two neutral statements in 8 emotions: words carry no emotion.",
)
