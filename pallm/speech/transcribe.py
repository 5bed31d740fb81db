"""Batched Whisper transcription with word timestamps, through whisperx (its VAD, its faster-whisper model).

whisperx's VAD cuts each clip into speech pieces of at most 30 s; the pieces of many clips are decoded
by several decoders at once (whisperx decodes one file at a time), in batches where that pays (GPU), and
Whisper's own cross-attention alignment times every word, so no second model is needed. Word times are
seconds inside the clip.

The encoder's 30 s window is most of the work on short clips, and both ways to shrink it fail on real
speech. Packing the speech of several clips into one window makes Whisper skip or repeat sentences
(RAVDESS says the same two sentences over and over) and smears its word timing across the gaps. Cutting
the window to the speech plus a few seconds (whisper.cpp's audio_ctx) makes it loop: with tiny.en on 300
RAVDESS clips, 4 s of margin repeated the sentence in 17 clips (WER 0.17 against 0.02), 1 s in 110. So
each piece gets its own full window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pallm.config import SpeechConfig
from pallm.schema import SAMPLE_RATE
from pallm.speech.models import resolve_asr_model
from pallm.speech.words import Word

WINDOW_S = 30.0  # Whisper's encoder window: VAD pieces are merged up to this length


@dataclass(frozen=True)
class Transcript:
    """What ASR heard in one clip: the text, its timed words, and whether VAD found speech at all."""

    text: str
    words: tuple[Word, ...]
    speech_found: bool


@dataclass(frozen=True)
class _Piece:
    clip: int
    start: float  # seconds inside the clip
    end: float


class Transcriber:
    """A loaded whisperx pipeline plus the options to decode with; build one with `load_transcriber`."""

    def __init__(self, pipeline: Any, config: SpeechConfig) -> None:
        self.pipeline = pipeline
        self.config = config
        self.model = pipeline.model
        # Pieces of different clips share a batch, so no prompt carries previous text; words are always timed.
        self.options = dataclasses.replace(
            pipeline.options,
            word_timestamps=True,
            without_timestamps=True,
            initial_prompt=None,
            multilingual=config.language is None and self.model.model.is_multilingual,
        )
        if pipeline.tokenizer is None:  # language detected per window; the tokenizer only needs some language
            from faster_whisper.tokenizer import Tokenizer

            pipeline.tokenizer = Tokenizer(self.model.hf_tokenizer, True, task="transcribe", language="en")
        self.tokenizer = pipeline.tokenizer

    def speech_pieces(self, audio: np.ndarray) -> list[tuple[float, float]]:
        """Speech regions of one clip as whisperx's VAD finds and merges them (at most 30 s each)."""
        vad = self.pipeline.vad_model
        if len(audio) == 0:
            return []
        segments = vad({"waveform": vad.preprocess_audio(audio), "sample_rate": SAMPLE_RATE})
        if not segments:
            return []
        merged = vad.merge_chunks(segments, WINDOW_S, onset=self.config.vad_onset, offset=self.config.vad_offset)
        duration = len(audio) / SAMPLE_RATE
        return [(max(0.0, m["start"]), min(duration, m["end"])) for m in merged if m["end"] > m["start"]]

    def transcribe(self, clips: Sequence[np.ndarray]) -> list[Transcript]:
        """Transcribe float32 16 kHz mono clips; raises on a decoding failure (see `transcribe_each`)."""
        pieces = [_Piece(i, s, e) for i, audio in enumerate(clips) for s, e in self.speech_pieces(audio)]
        decoders, _, batch_size = self.config.decoding()
        batches = [pieces[first : first + batch_size] for first in range(0, len(pieces), batch_size)]

        def decode(batch: list[_Piece]) -> list[list[Word]]:
            return self._decode(
                [clips[p.clip][round(p.start * SAMPLE_RATE) : round(p.end * SAMPLE_RATE)] for p in batch]
            )

        words: list[list[Word]] = [[] for _ in clips]
        # CTranslate2 runs as many batches at once as it has decoders, so that many are handed to it together.
        with ThreadPoolExecutor(decoders) as pool:
            for batch, decoded in zip(batches, pool.map(decode, batches), strict=True):
                for piece, found in zip(batch, decoded, strict=True):
                    words[piece.clip].extend(_to_clip_time(piece, w) for w in found)
        found_speech = {p.clip for p in pieces}
        out = []
        for i, ws in enumerate(words):
            ws.sort(key=lambda w: (w.start, w.end))
            text = "".join(w.word for w in ws).strip()
            out.append(Transcript(text, tuple(_strip(w) for w in ws), i in found_speech))
        return out

    def transcribe_each(self, clips: Sequence[np.ndarray]) -> list[Transcript | Exception]:
        """Like `transcribe`, but a clip whose decoding fails yields its exception and the others go on."""
        try:
            return list(self.transcribe(clips))
        except Exception:
            if len(clips) == 1:
                raise
        results: list[Transcript | Exception] = []
        for clip in clips:  # isolate the clip that breaks the batch
            try:
                results.extend(self.transcribe([clip]))
            except Exception as e:
                results.append(e)
        return results

    def _decode(self, windows: list[np.ndarray]) -> list[list[Word]]:
        from faster_whisper.transcribe import BatchedInferencePipeline
        from whisperx.audio import N_SAMPLES, log_mel_spectrogram

        n_mels = self.model.feat_kwargs.get("feature_size") or 80
        features = np.stack(
            [log_mel_spectrogram(w, n_mels=n_mels, padding=N_SAMPLES - len(w)).numpy() for w in windows]
        )
        meta = [{"offset": 0.0, "duration": len(w) / SAMPLE_RATE} for w in windows]
        # A fresh pipeline object per call: it keeps the last speech time as state, and chunk threads share us.
        segmented = BatchedInferencePipeline(self.model).forward(features, self.tokenizer, meta, self.options)
        return [
            [
                Word(w["word"], float(w["start"]), float(w["end"]), float(w["probability"]))
                for s in segs
                for w in s["words"]
            ]
            for segs in segmented
        ]


def load_transcriber(model: str, config: SpeechConfig) -> Transcriber:
    """Load the Whisper model `model` names (packaged, local or hub) with whisperx and its VAD."""
    import whisperx
    from faster_whisper import WhisperModel

    name, model = model, resolve_asr_model(model)
    decoders, threads, _ = config.decoding()
    whisper = WhisperModel(
        model,
        config.device,
        compute_type=config.compute_type,
        cpu_threads=threads,
        num_workers=decoders,
        local_files_only=model != name or config.offline,
    )
    # whisperx adds its VAD and decoding options around the model it is given (compute_type only for its log).
    pipeline = whisperx.load_model(
        model,
        config.device,
        compute_type=config.compute_type,
        language=config.language,
        model=whisper,
        vad_method="pyannote",
        vad_options={"vad_onset": config.vad_onset, "vad_offset": config.vad_offset},
        asr_options={"beam_size": config.beam_size},
    )
    return Transcriber(pipeline, config)


def _to_clip_time(piece: _Piece, w: Word) -> Word:
    start = min(max(piece.start + w.start, piece.start), piece.end)
    end = min(max(piece.start + w.end, start), piece.end)
    return Word(w.word, round(start, 3), round(end, 3), w.probability)


def _strip(w: Word) -> Word:
    return dataclasses.replace(w, word=w.word.strip())
