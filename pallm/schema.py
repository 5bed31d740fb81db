"""The row schema: every column a dataset row may carry, its Arrow type and its meaning.

This module is the single definition of column names and types. Corpus adapters, stages, shard
writers and the data card all read it; a stage declares which of these columns it reads and writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 4
SAMPLE_RATE = 16_000

AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
EMPHASIS_TYPE = pa.list_(pa.struct([("index", pa.int32()), ("word", pa.string())]))
WORDS_TYPE = pa.list_(
    pa.struct([("word", pa.string()), ("start", pa.float32()), ("end", pa.float32()), ("probability", pa.float32())])
)
WORD_CUES_TYPE = pa.list_(
    pa.struct(
        [("index", pa.int32()), ("word", pa.string()), ("f0_mean_hz", pa.float32()), ("energy_mean_db", pa.float32())]
    )
)
FLAGS_TYPE = pa.list_(pa.string())
TEACHER_TYPE = pa.struct(
    [("backend", pa.string()), ("model", pa.string()), ("prompt_version", pa.string()),
     ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32())]
)  # fmt: skip
CHECKS_TYPE = pa.struct(
    [("grounded", pa.bool_()), ("agrees", pa.bool_()), ("well_formed", pa.bool_()),
     ("unsupported_cues", FLAGS_TYPE), ("problems", FLAGS_TYPE), ("repaired", FLAGS_TYPE),
     ("first_grounded", pa.bool_()), ("first_well_formed", pa.bool_())]
)  # fmt: skip


@dataclass(frozen=True)
class Column:
    """One column of the dataset: name, Arrow type, whether null is allowed, and what it means."""

    name: str
    type: pa.DataType
    nullable: bool
    doc: str


COLUMNS: tuple[Column, ...] = (
    # Identity and labels: written by the corpus adapters.
    Column("id", pa.string(), False, "stable utterance id: `<corpus>/<corpus-local id>`"),
    Column("corpus", pa.string(), False, "corpus adapter name"),
    Column("split", pa.string(), False, "train, validation or test (speaker-independent)"),
    Column("fold", pa.int32(), True, "cross-validation fold (speaker-independent)"),
    Column("speaker_id", pa.string(), False, "speaker, prefixed with the corpus name"),
    Column("gender", pa.string(), False, "female, male or unknown"),
    Column("audio_path", pa.string(), False, "source file, relative to the corpus folder"),
    Column("channel", pa.int32(), True, "source channel kept (null: all channels downmixed)"),
    Column("emotion_native", pa.string(), False, "the corpus's own label word"),
    Column("emotion", pa.string(), False, "unified emotion label (see the label map)"),
    Column("sentiment", pa.string(), True, "positive, neutral or negative; null when undefined"),
    Column("transcript_ref", pa.string(), True, "the corpus's own transcript"),
    # Corpus-specific fields: null where a corpus has no such thing.
    Column("emotion_4class", pa.string(), True, "IEMOCAP 4-class view (neu, hap, ang, sad; exc->hap)"),
    Column("intensity", pa.string(), True, "RAVDESS emotional intensity: normal or strong"),
    Column("vocal_channel", pa.string(), True, "RAVDESS: speech or song"),
    Column("statement", pa.int32(), True, "RAVDESS statement number (1 or 2)"),
    Column("repetition", pa.int32(), True, "RAVDESS repetition number (1 or 2)"),
    Column("style", pa.string(), True, "Expresso speaking style"),
    Column("part", pa.string(), True, "corpus part: Expresso read/longform/conversational, IEMOCAP impro/script"),
    Column("session", pa.int32(), True, "IEMOCAP session (1-5)"),
    Column("dialog", pa.string(), True, "dialog or recording the utterance comes from"),
    Column("start_s", pa.float64(), True, "start of the utterance inside its dialog, seconds"),
    Column("end_s", pa.float64(), True, "end of the utterance inside its dialog, seconds"),
    Column("valence", pa.float32(), True, "dimensional rating (IEMOCAP: 1-5)"),
    Column("arousal", pa.float32(), True, "dimensional rating (IEMOCAP activation: 1-5)"),
    Column("dominance", pa.float32(), True, "dimensional rating (IEMOCAP: 1-5)"),
    Column("emphasis", EMPHASIS_TYPE, True, "emphasised words of the reference transcript (index, word)"),
    Column("flags", FLAGS_TYPE, False, "what a stage found doubtful: no_speech, no_f0, low_asr_confidence, ..."),
    # Audio stage.
    Column("audio", AUDIO_TYPE, False, "16 kHz mono 16-bit WAV bytes (Hugging Face Audio layout)"),
    Column("duration_s", pa.float64(), False, "duration of the audio, seconds"),
    Column("source_sample_rate", pa.int32(), False, "sample rate of the source file"),
    Column("source_channels", pa.int32(), False, "channel count of the source file"),
    Column("source_format", pa.string(), False, "container and sample format of the source, e.g. WAV/PCM_24"),
    Column("source_sha256", pa.string(), False, "SHA-256 of the source file's bytes"),
    Column("level_rms_dbfs", pa.float32(), False, "RMS level of the audio, dBFS (loudness is kept, not normalised)"),
    Column("level_peak_dbfs", pa.float32(), False, "peak level of the audio, dBFS"),
    Column("active_fraction", pa.float32(), False, "fraction of 20 ms frames within 40 dB of the loudest"),
    # Speech stage: null when the build runs without ASR.
    Column("transcript", pa.string(), True, "what ASR heard; empty when VAD found no speech"),
    Column("words", WORDS_TYPE, True, "recognised words with start/end inside the clip (s) and probability"),
    Column("asr_model", pa.string(), True, "the Whisper model that transcribed (as given to --asr)"),
    Column("word_timing", pa.string(), True, "how words were timed: whisper (cross-attention) or wav2vec2 (CTC)"),
    Column("asr_confidence", pa.float32(), True, "mean word probability"),
    Column("asr_wer", pa.float32(), True, "word error rate against transcript_ref (null without a reference)"),
    # Cue stage: raw measurements (Praat through parselmouth); null where not measurable.
    Column("f0_mean_hz", pa.float32(), True, "mean F0 of voiced frames, Hz (null: no usable F0, flag no_f0)"),
    Column("f0_range_st", pa.float32(), True, "F0 range, 5th to 95th percentile, semitones"),
    Column("f0_slope_st_per_s", pa.float32(), True, "linear F0 trend over the utterance, semitones per second"),
    Column("voiced_fraction", pa.float32(), True, "fraction of 10 ms frames with F0, within the speech"),
    Column("energy_mean_db", pa.float32(), True, "mean intensity of speech frames, dB (Praat)"),
    Column("energy_range_db", pa.float32(), True, "intensity range, 5th to 95th percentile, dB"),
    Column("jitter_local", pa.float32(), True, "period-to-period F0 perturbation (Praat jitter local)"),
    Column("shimmer_local", pa.float32(), True, "period-to-period amplitude perturbation (Praat shimmer local)"),
    Column("hnr_db", pa.float32(), True, "harmonics-to-noise ratio of voiced frames, dB"),
    Column("speech_rate_wps", pa.float32(), True, "words per second between the first and last word"),
    Column("speech_rate_sps", pa.float32(), True, "syllables per second (vowel-group count)"),
    Column("pause_count", pa.int32(), True, "gaps of 0.15 s or more between words"),
    Column("pause_total_s", pa.float32(), True, "total length of those gaps, seconds"),
    Column("pause_longest_s", pa.float32(), True, "longest gap, seconds"),
    Column("word_cues", WORD_CUES_TYPE, True, "per word: F0 and intensity over its span"),
    Column("emphasis_measured", EMPHASIS_TYPE, True, "words whose pitch or energy stands out (index, word)"),
    # Describe stage: per-speaker z-scores and the cue vocabulary (see pallm.cues.vocabulary).
    Column("f0_mean_z", pa.float32(), True, "f0 level against the speaker's utterances (z-score of semitones)"),
    Column("f0_range_z", pa.float32(), True, "f0 range against the speaker's utterances (z-score)"),
    Column("energy_mean_z", pa.float32(), True, "energy level against the speaker's utterances (z-score)"),
    Column("energy_range_z", pa.float32(), True, "energy range against the speaker's utterances (z-score)"),
    Column("speech_rate_z", pa.float32(), True, "speaking rate (syllables/s) against the speaker's utterances"),
    Column("cue_words", FLAGS_TYPE, True, "the measured cues in words a teacher can use: 'pitch: high', ..."),
    # Lexical-shortcut probe: a words-only classifier, cross-validated across speakers.
    Column("words_only_p", pa.float32(), True, "probability the words-only probe gives the gold emotion (out of fold)"),
    Column("words_only_label", pa.string(), True, "the emotion the words-only probe picks (out of fold)"),
    # Teacher: training targets, and the checks on them.
    Column("rationale", pa.string(), True, "chain-of-thought from the measured cues to the gold label"),
    Column("cited_cues", FLAGS_TYPE, True, "the cue phrases the rationale relies on (checked against cue_words)"),
    Column("teacher_label", pa.string(), True, "the teacher's own emotion label, judged without the gold label"),
    Column("reply", pa.string(), True, "a reply to the speaker that fits their tone"),
    Column("words_only_reply", pa.string(), True, "the reply one would give reading the transcript alone"),
    Column("teacher", TEACHER_TYPE, True, "backend, model, prompt versions and token usage of the answers"),
    Column(
        "checks",
        CHECKS_TYPE,
        True,
        "grounded, agrees (teacher_label = emotion), well_formed; what failed; tasks re-asked, verdict before",
    ),
    Column("schema_version", pa.int32(), False, "version of this schema"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
_BY_NAME = {c.name: c for c in COLUMNS}

#: Columns every corpus adapter must fill (the rest of the label block may stay null).
UTTERANCE_COLUMNS: tuple[str, ...] = COLUMN_NAMES[: COLUMN_NAMES.index("audio")]
#: Columns known once a build is planned: the adapters' plus the source file's content hash.
PLANNED_COLUMNS: tuple[str, ...] = (*UTTERANCE_COLUMNS, "source_sha256")

QUARANTINE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("corpus", pa.string()),
        ("path", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
    ]
)


def column(name: str) -> Column:
    """Look up a column by name; raises KeyError naming the unknown column."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown column {name!r}; known columns live in pallm.schema.COLUMNS") from None


def arrow_schema(names: tuple[str, ...] = COLUMN_NAMES) -> pa.Schema:
    """Arrow schema for the given columns, carrying Hugging Face `datasets` feature metadata.

    Every Arrow field is nullable, as `datasets` expects; `validate_row` enforces the columns
    that must not be null before rows are written.
    """
    fields = [pa.field(n, column(n).type) for n in names]
    features = {n: _hf_feature(column(n).type) for n in names}
    if "audio" in features:
        features["audio"] = {"_type": "Audio", "sampling_rate": SAMPLE_RATE}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return pa.schema(fields, metadata=meta)


def _hf_feature(t: pa.DataType) -> dict[str, Any]:
    """The `datasets` feature dict for an Arrow type (datasets >= 4 JSON form)."""
    if pa.types.is_struct(t):
        return {t.field(i).name: _hf_feature(t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_list(t):
        return {"_type": "List", "feature": _hf_feature(t.value_type)}
    return {"_type": "Value", "dtype": str(t)}


def validate_row(row: dict[str, Any], names: tuple[str, ...]) -> None:
    """Raise ValueError if a non-nullable column among `names` is missing or null in `row`."""
    missing = [n for n in names if not column(n).nullable and row.get(n) is None]
    if missing:
        raise ValueError(f"row {row.get('id')!r} lacks required column(s): {', '.join(missing)}")
