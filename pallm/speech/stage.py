"""The speech stage: transcript, timed words and word error rate for a batch of rows.

Models load on first use, once per stage object, and are shared by the chunk tasks of a process (on a
cluster, through `pallm.resident`).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from pallm.config import SPEECH_RUNTIME, SpeechConfig
from pallm.corpora.base import ItemError
from pallm.resident import LoadLog, resident
from pallm.speech.models import looks_like_path, resolve_asr_model
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
        self.loads = LoadLog()

    def __reduce__(self) -> tuple[Any, ...]:
        return SpeechStep, (self.model, self.config)  # to another process without the loaded models

    def transcriber(self) -> Transcriber:
        with self._lock:
            if self._transcriber is None:
                self._transcriber = self.loads.timed(
                    f"whisper {self.model}", lambda: load_transcriber(self.model, self.config)
                )
                if self.config.align_model:
                    from pallm.speech.align import load_aligner

                    language = self.config.language or "en"
                    self._aligner = self.loads.timed(
                        f"aligner {self.config.align_model}",
                        lambda: load_aligner(self.config.align_model, language=language, device=self.config.device),
                    )
            return self._transcriber

    def close(self) -> None:
        """Free the models (a later call loads them again)."""
        with self._lock:
            self._transcriber = self._aligner = None

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
    """The speech stage for `--asr MODEL`; local model folders are checked here, before any work."""
    resolved = resolve_asr_model(model)
    if config.align_model and looks_like_path(config.align_model):
        from pallm.speech.align import check_aligner_folder

        check_aligner_folder(Path(config.align_model).expanduser())
    return resident(Stage(
        name="speech",
        version=VERSION,
        reads=("audio", "transcript_ref", "flags"),
        writes=WRITES,
        process=SpeechStep(model, config),
        config=config,
        runtime=SPEECH_RUNTIME,
        environment=_environment(resolved),
        batch_size=_rows_per_call(config),
    ))  # fmt: skip


def _rows_per_call(config: SpeechConfig) -> int:
    """Rows handed to the stage at once: enough speech pieces to keep every decoder busy."""
    decoders, _, batch_size = config.decoding()
    return max(16, 2 * decoders * batch_size)


def _environment(resolved: str) -> dict[str, str]:
    """What identifies the model's weights and the decoders, so new weights re-run the stage."""
    from importlib.metadata import version

    env = {p: version(p) for p in ("whisperx", "faster-whisper", "ctranslate2")}
    model_bin = Path(resolved) / "model.bin"
    if model_bin.is_file():
        env["model_bytes"] = str(model_bin.stat().st_size)
        env["model_config"] = (Path(resolved) / "config.json").read_text()[:2000]
    else:
        env["model_hub"] = resolved
    return env


DIARIZE_VERSION = "1"
DIARIZE_WRITES = (
    "id", "speaker_id", "start_s", "end_s", "audio", "duration_s", "level_rms_dbfs", "level_peak_dbfs",
    "active_fraction", "transcript", "transcript_ref", "words", "asr_confidence", "asr_wer",
)  # fmt: skip


class DiarizeStep:
    """Cut recordings of several speakers at speaker turns: one row per turn, with its own audio and words.

    The recording is transcribed whole first (Whisper hears the context); pyannote then finds the turns
    and each word goes to the turn it overlaps most (`cut_at_turns`). Rows of corpora recorded one
    speaker per file pass through unchanged.
    """

    def __init__(self, config: SpeechConfig, diarized: frozenset[str]) -> None:
        self.config = config
        self.diarized = diarized
        self._lock = threading.Lock()
        self._diarizer: Any = None
        self.loads = LoadLog()

    def __reduce__(self) -> tuple[Any, ...]:
        return DiarizeStep, (self.config, self.diarized)  # to another process without the loaded pipeline

    def diarizer(self) -> Any:
        import os

        from pallm.speech.diarize import load_diarizer

        with self._lock:
            if self._diarizer is None:
                token = os.environ.get(self.config.hf_token_env)
                model = self.config.diarize_model or ""
                self._diarizer = self.loads.timed(
                    f"diarizer {model}", lambda: load_diarizer(model, token=token, device=self.config.device)
                )
            return self._diarizer

    def close(self) -> None:
        """Free the pipeline (a later call loads it again)."""
        with self._lock:
            self._diarizer = None

    def __call__(self, rows: list[Row]) -> list[Any]:
        return [self._turns(r) if r["corpus"] in self.diarized and r["words"] else [_keep(r)] for r in rows]

    def _turns(self, row: Row) -> list[Row]:
        from pallm.audio.levels import measure
        from pallm.audio.stage import encode_wav
        from pallm.schema import SAMPLE_RATE
        from pallm.speech.diarize import cut_at_turns, speaker_turns
        from pallm.speech.words import Word

        audio = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")[0]
        turns = speaker_turns(self.diarizer(), audio, min_speakers=self.config.min_speakers,
                              max_speakers=self.config.max_speakers)  # fmt: skip
        parts = cut_at_turns([Word(**w) for w in row["words"]], turns)
        if not parts:
            return [_keep(row)]
        out = []
        duration = len(audio) / SAMPLE_RATE
        for turn, words in parts:
            start = max(0.0, min(turn.start, words[0].start))
            end = min(duration, max(turn.end, words[-1].end))
            cut = audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
            levels = measure(cut, SAMPLE_RATE)
            shifted = [Word(w.word, round(w.start - start, 3), round(w.end - start, 3), w.probability) for w in words]
            offset = row["start_s"] or 0.0
            out.append({
                "id": f"{row['id']}@{round(start * 1000):07d}",  # stable: the turn's start in ms
                "speaker_id": f"{row['speaker_id']}/{turn.speaker}",
                "start_s": offset + start,
                "end_s": offset + end,
                "audio": {"bytes": encode_wav(cut), "path": row["audio"]["path"]},
                "duration_s": len(cut) / SAMPLE_RATE,
                "level_rms_dbfs": levels.rms_dbfs,
                "level_peak_dbfs": levels.peak_dbfs,
                "active_fraction": levels.active_fraction,
                "transcript": " ".join(w.word for w in shifted),
                "transcript_ref": None,  # the reference covers the whole recording, not one turn
                "words": [w.as_dict() for w in shifted],
                "asr_confidence": float(np.mean([w.probability for w in shifted])),
                "asr_wer": None,
            })  # fmt: skip
        return out


def _keep(row: Row) -> Row:
    return {c: row[c] for c in DIARIZE_WRITES}


def diarize_stage(config: SpeechConfig, diarized: frozenset[str]) -> Stage:
    """The diarization stage for the corpora in `diarized` (recordings that may hold several speakers)."""
    from pallm.speech.diarize import pipeline_source

    pipeline_source(config.diarize_model or "")  # a missing local config.yaml stops the build here
    return resident(Stage(
        name="diarize",
        version=DIARIZE_VERSION,
        reads=("corpus", "flags", *DIARIZE_WRITES),
        writes=DIARIZE_WRITES,
        process=DiarizeStep(config, diarized),
        config=config,
        expands=True,
    ))  # fmt: skip
