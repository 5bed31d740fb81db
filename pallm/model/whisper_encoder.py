"""A frozen Whisper encoder (CTranslate2) whose outputs are cached per clip: the audio side of a speech LLM
assembled from pretrained parts, where nothing but a projector and adapters train.

Whisper encodes 30 s windows into 1,500 frames (20 ms each); a clip keeps the frames that cover it. The
encoder never changes during training, so each clip is encoded once and its frames are read back from
`cache_dir` (float16 `.npy`, keyed by the audio's hash and the model) on every later epoch and run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pallm.shards import atomic_path

FRAME_S = 0.02  # one encoder frame per 20 ms of audio
WINDOW_S = 30.0
SAMPLE_RATE = 16_000


class WhisperEncoder:
    """`encoder(clips)` -> one `[frames, dim]` float32 array per clip (16 kHz mono float32 samples)."""

    def __init__(
        self, model: str = "base", cache_dir: Path | None = None, device: str = "cpu", compute_type: str | None = None,
        threads: int = 0,
    ) -> None:  # fmt: skip
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor

        from pallm.speech.models import resolve_asr_model

        path = resolve_asr_model(model)
        # float32 on the CPU (the packaged weights are float16, which CPUs do not compute natively).
        compute_type = compute_type or ("float32" if device == "cpu" else "float16")
        self.model = ctranslate2.models.Whisper(path, device=device, compute_type=compute_type, intra_threads=threads)
        self.features = FeatureExtractor(feature_size=self.model.n_mels)
        self.name = Path(path).name if Path(path).exists() else model
        self.cache_dir = cache_dir
        self.encoded = 0  # clips that went through the encoder (not the cache)

    def key(self, clip: np.ndarray) -> str:
        """The clip's name in the cache: a hash of the model and the samples."""
        return hashlib.sha256(self.name.encode() + clip.astype(np.float32).tobytes()).hexdigest()[:32]

    def _encode(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        import ctranslate2

        mels = []
        for clip in clips:
            if len(clip) > WINDOW_S * SAMPLE_RATE:
                raise ValueError(f"a clip of {len(clip) / SAMPLE_RATE:.1f} s is longer than Whisper's 30 s window")
            mel = self.features(clip, padding=0)
            width = int(WINDOW_S / 0.01)  # 100 mel frames a second, padded to the window
            mels.append(np.pad(mel[:, :width], ((0, 0), (0, max(0, width - mel.shape[1])))))
        out = np.asarray(self.model.encode(ctranslate2.StorageView.from_array(np.stack(mels).astype(np.float32)),
                                           to_cpu=True))  # fmt: skip
        self.encoded += len(clips)
        return [out[k, : max(1, math.ceil(len(c) / SAMPLE_RATE / FRAME_S))] for k, c in enumerate(clips)]

    def __call__(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The encoder frames covering each clip, from the cache where they were computed before."""
        out: list[np.ndarray | None] = [None] * len(clips)
        paths = [self.cache_dir / f"{self.key(c)}.npy" if self.cache_dir else None for c in clips]
        todo = []
        for k, p in enumerate(paths):
            if p is not None and p.is_file():
                out[k] = np.load(p).astype(np.float32)
            else:
                todo.append(k)
        if todo:
            for k, frames in zip(todo, self._encode([clips[k] for k in todo]), strict=True):
                out[k] = frames
                if paths[k] is not None:
                    with atomic_path(paths[k]) as tmp, tmp.open("wb") as f:
                        np.save(f, frames.astype(np.float16))
        return [o for o in out if o is not None]
