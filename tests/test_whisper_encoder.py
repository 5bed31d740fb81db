"""The frozen Whisper encoder of the offline backbone: real Whisper base weights on real RAVDESS clips."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pallm.model.whisper_encoder import WhisperEncoder


def test_frames_cover_each_clip_and_come_back_from_the_cache(ravdess16k: Path, tmp_path: Path) -> None:
    clips = [sf.read(p, dtype="float32")[0] for p in sorted((ravdess16k / "Actor_01").glob("*.wav"))[:2]]
    encoder = WhisperEncoder("base", cache_dir=tmp_path)
    first = encoder(clips)
    assert encoder.encoded == 2
    for clip, frames in zip(clips, first, strict=True):
        assert frames.shape == (math.ceil(len(clip) / 16000 / 0.02), 512), "20 ms frames of Whisper base's width"
        assert np.isfinite(frames).all()
    again = WhisperEncoder("base", cache_dir=tmp_path)(clips[::-1])
    assert encoder.encoded == 2 and len(list(tmp_path.glob("*.npy"))) == 2
    for a, b in zip(first, again[::-1], strict=True):
        np.testing.assert_allclose(a, b, atol=2e-2 * np.abs(a).max())  # float16 in the cache
    uncached = WhisperEncoder("base")  # batched with another clip, a clip encodes as it does alone
    beside = uncached([clips[0], np.zeros(16000, np.float32)])[0]
    np.testing.assert_allclose(beside, first[0], atol=2e-2 * np.abs(beside).max())
    silent = uncached([np.zeros(len(clips[0]), np.float32)])[0]
    assert np.abs(silent - first[0]).mean() > 0.1 * np.abs(first[0]).mean(), "speech and silence encode alike"
    with pytest.raises(ValueError, match="longer than Whisper's 30 s window"):
        encoder([np.zeros(31 * 16000, np.float32)])
