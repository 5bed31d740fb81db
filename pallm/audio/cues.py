"""Raw paralinguistic measurements of one utterance, with Praat (praat-parselmouth) doing the signal work.

Per utterance: F0 (level, range, slope, voiced fraction), energy (level, range), voice quality
(jitter, shimmer, harmonics-to-noise ratio) and, from the word timestamps, speaking rate and pauses.
Per word: F0 and energy over the word's span, and which words stand out (measured emphasis).
Values are raw here; `pallm.cues` normalises them per speaker and turns them into words.

Thresholds, all documented in the data card:
- pitch is tracked between 60 and 600 Hz (Praat's autocorrelation method, 10 ms steps);
- fewer than MIN_VOICED_S of voiced frames means no usable F0: the F0 fields are null, never 0;
- a pause is a gap of at least PAUSE_S between consecutive words;
- a word is emphasised when its F0 is EMPHASIS_ST semitones or its energy EMPHASIS_DB dB above the
  median word of its utterance (utterances of three words or more).
"""

from __future__ import annotations

import io
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from pallm.corpora.base import ItemError
from pallm.schema import SAMPLE_RATE
from pallm.speech.words import Word
from pallm.stages import Row, Stage, per_row

PITCH_FLOOR_HZ = 60.0
PITCH_CEILING_HZ = 600.0
TIME_STEP_S = 0.01
MIN_VOICED_S = 0.1
PAUSE_S = 0.15
EMPHASIS_ST = 2.5
EMPHASIS_DB = 4.0
EMPHASIS_MIN_WORDS = 3

#: Flags a row can carry from this module.
NO_F0 = "no_f0"

VERSION = "1"
UTTERANCE_CUES = (
    "f0_mean_hz", "f0_range_st", "f0_slope_st_per_s", "voiced_fraction",
    "energy_mean_db", "energy_range_db", "jitter_local", "shimmer_local", "hnr_db",
    "speech_rate_wps", "speech_rate_sps", "pause_count", "pause_total_s", "pause_longest_s",
)  # fmt: skip


@dataclass(frozen=True)
class Tracks:
    """Frame-level F0 (Hz, NaN where unvoiced) and intensity (dB) on a shared 10 ms grid."""

    times: np.ndarray
    f0: np.ndarray
    intensity: np.ndarray
    strength: np.ndarray  # autocorrelation peak of each frame's best candidate (0-1)
    pitch: Any  # the Praat Pitch object, reused for the voice-quality measures


def tracks(sound: Any) -> Tracks:
    """Praat pitch and intensity of a parselmouth Sound, resampled onto one time grid."""
    pitch = sound.to_pitch_ac(time_step=TIME_STEP_S, pitch_floor=PITCH_FLOOR_HZ, pitch_ceiling=PITCH_CEILING_HZ)
    times = pitch.xs()
    f0 = pitch.selected_array["frequency"].astype(np.float64)
    f0[f0 <= 0] = np.nan
    intensity = sound.to_intensity(minimum_pitch=PITCH_FLOOR_HZ, time_step=TIME_STEP_S)
    level = np.interp(times, intensity.xs(), intensity.values[0]) if intensity.n_frames else np.full_like(times, np.nan)
    return Tracks(times, f0, level, pitch.selected_array["strength"].astype(np.float64), pitch)


def measure(audio: np.ndarray, sample_rate: int, words: list[Word] | None) -> tuple[dict[str, Any], list[str]]:
    """Utterance cues, per-word cues and flags for one clip (float samples in [-1, 1])."""
    import parselmouth
    from parselmouth.praat import call

    # Measure the speech, not the silence around it: with word times, only their span (plus a margin
    # for Praat's analysis windows) is analysed, which also halves the work on typical clips.
    offset = 0.0
    if words:
        offset = max(0.0, words[0].start - 0.1)
        audio = audio[int(offset * sample_rate) : int((words[-1].end + 0.1) * sample_rate)]
        words = [Word(w.word, w.start - offset, w.end - offset, w.probability) for w in words]
    sound = parselmouth.Sound(audio.astype(np.float64), sampling_frequency=sample_rate)
    t = tracks(sound)
    span = _speech_span(t, words)
    inside = (t.times >= span[0]) & (t.times <= span[1])
    f0 = t.f0[inside]
    voiced = ~np.isnan(f0)
    flags: list[str] = []
    cues: dict[str, Any] = dict.fromkeys(UTTERANCE_CUES)
    level = t.intensity[inside & ~np.isnan(t.intensity)]
    if level.size:
        # Intensity of speech, not of the silence around it: frames within 30 dB of the loudest.
        speech = level[level >= level.max() - 30]
        cues["energy_mean_db"] = float(np.mean(speech))
        cues["energy_range_db"] = float(np.percentile(speech, 95) - np.percentile(speech, 5))
    cues["voiced_fraction"] = float(voiced.mean()) if f0.size else 0.0
    if voiced.sum() * TIME_STEP_S < MIN_VOICED_S:
        flags.append(NO_F0)
    else:
        semitones = 12 * np.log2(f0[voiced])
        cues["f0_mean_hz"] = float(np.mean(f0[voiced]))
        cues["f0_range_st"] = float(np.percentile(semitones, 95) - np.percentile(semitones, 5))
        cues["f0_slope_st_per_s"] = float(np.polyfit(t.times[inside][voiced], semitones, 1)[0])
        points = call([sound, t.pitch], "To PointProcess (cc)")
        cues["jitter_local"] = _finite(call(points, "Get jitter (local)", 0, 0, 0.0001, 0.02, 1.3))
        cues["shimmer_local"] = _finite(call([sound, points], "Get shimmer (local)", 0, 0, 0.0001, 0.02, 1.3, 1.6))
        # HNR from the autocorrelation peak r the pitch tracker already found, 10*log10(r / (1 - r))
        # (Boersma 1993, what Praat's Harmonicity (ac) computes); a second Praat pass would cost 5x more.
        r = np.clip(t.strength[inside][voiced], 1e-6, 1 - 1e-6)
        cues["hnr_db"] = float(np.mean(10 * np.log10(r / (1 - r))))
    if words:
        cues.update(_timing(words))
    word_cues = _word_cues(t, words or [])
    return cues | {"word_cues": word_cues, "emphasis_measured": emphasised(word_cues)}, flags


def _speech_span(t: Tracks, words: list[Word] | None) -> tuple[float, float]:
    if words:
        return words[0].start, words[-1].end
    return (float(t.times[0]), float(t.times[-1])) if t.times.size else (0.0, 0.0)


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def syllables(word: str) -> int:
    """Rough English syllable count: groups of vowels, at least one per word."""
    w = re.sub(r"[^a-z]", "", word.lower())
    groups = re.findall(r"[aeiouy]+", w)
    n = len(groups) - (1 if w.endswith("e") and len(groups) > 1 and not w.endswith("le") else 0)
    return max(1, n)


def _timing(words: list[Word]) -> dict[str, Any]:
    duration = words[-1].end - words[0].start
    gaps = [b.start - a.end for a, b in itertools.pairwise(words)]
    pauses = [g for g in gaps if g >= PAUSE_S]
    return {
        "speech_rate_wps": len(words) / duration if duration > 0 else None,
        "speech_rate_sps": sum(syllables(w.word) for w in words) / duration if duration > 0 else None,
        "pause_count": len(pauses),
        "pause_total_s": float(sum(pauses)),
        "pause_longest_s": float(max(pauses, default=0.0)),
    }


def _word_cues(t: Tracks, words: list[Word]) -> list[dict[str, Any]]:
    out = []
    for i, w in enumerate(words):
        inside = (t.times >= w.start) & (t.times <= w.end)
        f0 = t.f0[inside]
        f0 = f0[~np.isnan(f0)]
        level = t.intensity[inside]
        level = level[~np.isnan(level)]
        out.append(
            {
                "index": i,
                "word": w.word,
                "f0_mean_hz": float(np.mean(f0)) if f0.size * TIME_STEP_S >= 0.03 else None,
                "energy_mean_db": float(np.mean(level)) if level.size else None,
            }
        )
    return out


def emphasised(word_cues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The words whose pitch or energy stands out from the median word of the utterance."""
    if len(word_cues) < EMPHASIS_MIN_WORDS:
        return []
    pitch = [12 * math.log2(w["f0_mean_hz"]) for w in word_cues if w["f0_mean_hz"]]
    energy = [w["energy_mean_db"] for w in word_cues if w["energy_mean_db"] is not None]
    mid_st = float(np.median(pitch)) if pitch else None
    mid_db = float(np.median(energy)) if energy else None
    out = []
    for w in word_cues:
        high_pitch = mid_st is not None and w["f0_mean_hz"] and 12 * math.log2(w["f0_mean_hz"]) - mid_st >= EMPHASIS_ST
        loud = mid_db is not None and w["energy_mean_db"] is not None and w["energy_mean_db"] - mid_db >= EMPHASIS_DB
        if high_pitch or loud:
            out.append({"index": w["index"], "word": w["word"]})
    return out


def measure_row(row: Row, *, with_words: bool) -> Row:
    """The cue columns of one row (its audio, and its words when the build ran ASR)."""
    import soundfile as sf

    audio, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
    words = [Word(**w) for w in row["words"] or []] if with_words else None
    if with_words and not words:
        words = None  # no speech found: measure the whole clip, rate and pauses stay null
    try:
        cues, flags = measure(audio, rate, words)
    except Exception as e:  # Praat refuses some degenerate signals; quarantine the item, keep the build
        raise ItemError(f"cue measurement failed: {type(e).__name__}: {e}") from None
    return cues | {"flags": [*row["flags"], *flags]}


def cue_stage(with_words: bool) -> Stage:
    """The cue stage; with ASR it also reads the word timestamps (rate, pauses, per-word cues)."""
    from functools import partial
    from importlib.metadata import version

    return Stage(
        name="cues",
        version=VERSION,
        reads=("audio", "flags", *(("words",) if with_words else ())),
        writes=(*UTTERANCE_CUES, "word_cues", "emphasis_measured", "flags"),
        process=per_row(partial(measure_row, with_words=with_words)),
        environment={"praat-parselmouth": version("praat-parselmouth"), "sample_rate": str(SAMPLE_RATE)},
    )
