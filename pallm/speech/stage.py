"""The speech stage: transcript, timed words and word error rate for a batch of rows.

Models load on first use, once per stage object, and are shared by the threads that process chunks.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import numpy as np
import soundfile as sf

from pallm.config import SpeechConfig
from pallm.corpora.base import ItemError
from pallm.speech.models import resolve_asr_model
from pallm.speech.transcribe import Transcriber, Transcript, load_transcriber
from pallm.speech.wer import word_error_rate
from pallm.stages import Row, Stage

VERSION = "1"
WRITES = ("transcript", "words", "asr_model", "word_timing", "asr_confidence", "asr_wer", "flags")
#: Flags this stage can add.
NO_SPEECH = "no_speech"
LOW_ASR_CONFIDENCE = "low_asr_confidence"
LOW_CONFIDENCE_BELOW = 0.5  # mean word probability under which a transcript is sent to review


class SpeechStep:
    """Transcribe rows in batches with one lazily loaded Whisper model (and aligner, when configured)."""

    def __init__(self, model: str, config: SpeechConfig) -> None:
        self.model = model
        self.config = config
        self._lock = threading.Lock()
        self._transcriber: Transcriber | None = None
        self._aligner: Any = None

    def transcriber(self) -> Transcriber:
        with self._lock:
            if self._transcriber is None:
                self._transcriber = load_transcriber(self.model, self.config)
                if self.config.align_model:
                    from pallm.speech.align import load_aligner

                    self._aligner = load_aligner(
                        self.config.align_model, language=self.config.language or "en", device=self.config.device
                    )
            return self._transcriber

    def __call__(self, rows: list[Row]) -> list[Row | ItemError]:
        clips = [sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="float32")[0] for r in rows]
        results = self.transcriber().transcribe_each(clips)
        out: list[Row | ItemError] = []
        for row, clip, result in zip(rows, clips, results, strict=True):
            if isinstance(result, Exception):
                out.append(ItemError(f"ASR failed: {type(result).__name__}: {result}"))
            else:
                out.append(self._row(row, clip, result))
        return out

    def _row(self, row: Row, clip: np.ndarray, t: Transcript) -> Row:
        words = list(t.words)
        timing = "whisper"
        if self._aligner is not None and words:
            from pallm.speech.align import align_words

            segment = {"start": words[0].start, "end": words[-1].end, "text": t.text}
            words = align_words(self._aligner, [segment], clip)
            timing = "wav2vec2"
        flags = list(row["flags"])
        confidence = float(np.mean([w.probability for w in words])) if words else None
        if not t.speech_found or not words:
            flags.append(NO_SPEECH)
        elif confidence is not None and confidence < LOW_CONFIDENCE_BELOW:
            flags.append(LOW_ASR_CONFIDENCE)
        return {
            "transcript": t.text,
            "words": [w.as_dict() for w in words],
            "asr_model": self.model,
            "word_timing": timing,
            "asr_confidence": confidence,
            "asr_wer": word_error_rate(row["transcript_ref"], t.text),
            "flags": flags,
        }


def speech_stage(model: str, config: SpeechConfig) -> Stage:
    """The speech stage for `--asr MODEL`; a local model folder is checked here, before any work."""
    resolved = resolve_asr_model(model)
    return Stage(
        name="speech",
        version=VERSION,
        reads=("audio", "transcript_ref", "flags"),
        writes=WRITES,
        process=SpeechStep(model, config),
        config=config,
        environment=_environment(resolved),
        batch_size=config.batch_size * 2,
    )


def _environment(resolved: str) -> dict[str, str]:
    """What identifies the model's weights and the decoders, so new weights re-run the stage."""
    from importlib.metadata import version
    from pathlib import Path

    env = {p: version(p) for p in ("whisperx", "faster-whisper", "ctranslate2")}
    model_bin = Path(resolved) / "model.bin"
    if model_bin.is_file():
        env["model_bytes"] = str(model_bin.stat().st_size)
        env["model_config"] = (Path(resolved) / "config.json").read_text()[:2000]
    else:
        env["model_hub"] = resolved
    return env
