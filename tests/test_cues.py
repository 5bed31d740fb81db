"""Cue measurement on signals whose answer is known, per-speaker normalisation, and the cue vocabulary."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from pallm.audio.cues import NO_F0, PAUSE_S, measure, syllables
from pallm.cues.normalize import MIN_UTTERANCES, digest, speaker_norms, z_scores
from pallm.cues.stage import describe_row
from pallm.cues.vocabulary import FALLING_ST_PER_S, RELATIVE_Z, RISING_ST_PER_S, describe, rules
from pallm.speech.words import Word

RATE = 16_000


def voice(f0: np.ndarray | float, seconds: float, amplitude: float = 0.2) -> np.ndarray:
    """A harmonic, voice-like signal with the given F0 (constant or a per-sample track)."""
    n = int(seconds * RATE)
    track = np.broadcast_to(np.asarray(f0, dtype=np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(track) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    return (amplitude * x / np.max(np.abs(x))).astype(np.float32)


def test_f0_of_a_steady_voice_is_its_frequency() -> None:
    cues, flags = measure(voice(180.0, 1.5), RATE, None)
    assert cues["f0_mean_hz"] == pytest.approx(180.0, rel=0.01)
    assert cues["f0_range_st"] < 0.3 and abs(cues["f0_slope_st_per_s"]) < 0.5
    assert cues["voiced_fraction"] > 0.9 and flags == []
    assert cues["hnr_db"] > 15  # a clean harmonic signal is far above noise
    assert cues["speech_rate_wps"] is None and cues["pause_count"] is None  # no words, no timing cues


def test_a_rising_glide_has_its_slope_and_range() -> None:
    seconds = 2.0
    track = 120.0 * 2 ** (np.arange(int(seconds * RATE)) / RATE * 6 / 12)  # +6 semitones per second
    cues, _ = measure(voice(track, seconds), RATE, None)
    assert cues["f0_slope_st_per_s"] == pytest.approx(6.0, rel=0.1)
    assert cues["f0_range_st"] == pytest.approx(6.0 * seconds * 0.9, rel=0.1)  # 5th to 95th percentile


def test_noise_has_no_f0_fields_and_a_flag_never_zeros() -> None:
    noise = np.random.default_rng(0).normal(0, 0.1, RATE).astype(np.float32)
    cues, flags = measure(noise, RATE, None)
    assert flags == [NO_F0]
    for c in ("f0_mean_hz", "f0_range_st", "f0_slope_st_per_s", "jitter_local", "shimmer_local", "hnr_db"):
        assert cues[c] is None, c
    assert cues["energy_mean_db"] is not None  # loudness is still measured


def test_energy_follows_the_level_in_db() -> None:
    quiet, _ = measure(voice(150.0, 1.0, amplitude=0.05), RATE, None)
    loud, _ = measure(voice(150.0, 1.0, amplitude=0.05 * 10 ** (12 / 20)), RATE, None)
    assert loud["energy_mean_db"] - quiet["energy_mean_db"] == pytest.approx(12.0, abs=0.3)


def test_rate_pauses_and_emphasis_come_from_the_word_timestamps() -> None:
    # Four words of 0.3 s; a 0.5 s pause before the third; the third word is 10 dB louder and higher.
    spans = [(0.2, 0.5), (0.5, 0.8), (1.3, 1.6), (1.6, 1.9)]
    x = np.zeros(int(2.2 * RATE), dtype=np.float32)
    for i, (a, b) in enumerate(spans):
        seg = voice(260.0 if i == 2 else 140.0, b - a, amplitude=0.3 if i == 2 else 0.095)
        x[int(a * RATE) : int(a * RATE) + seg.size] = seg
    words = [Word(w, a, b, 0.9) for w, (a, b) in zip(["we", "open", "the", "door"], spans, strict=True)]
    cues, _ = measure(x, RATE, words)
    assert cues["speech_rate_wps"] == pytest.approx(4 / 1.7)
    assert cues["speech_rate_sps"] == pytest.approx(5 / 1.7)  # we, o-pen, the, door
    assert (cues["pause_count"], cues["pause_total_s"], cues["pause_longest_s"]) == (1, pytest.approx(0.5),
                                                                                    pytest.approx(0.5))  # fmt: skip
    assert [w["word"] for w in cues["word_cues"]] == ["we", "open", "the", "door"]
    assert cues["word_cues"][2]["f0_mean_hz"] == pytest.approx(260.0, rel=0.02)
    assert cues["word_cues"][0]["f0_mean_hz"] == pytest.approx(140.0, rel=0.02)
    assert cues["emphasis_measured"] == [{"index": 2, "word": "the"}]
    gaps_under = measure(x, RATE, [Word("a", 0.2, 0.5, 1), Word("b", 0.5 + PAUSE_S / 2, 0.8, 1)])[0]
    assert gaps_under["pause_count"] == 0  # a gap shorter than PAUSE_S is not a pause


@pytest.mark.parametrize(("word", "n"), [("door", 1), ("talking", 2), ("sitting", 2), ("are", 1), ("emotion", 3)])
def test_syllable_count(word: str, n: int) -> None:
    assert syllables(word) == n


def _table(rows: list[dict]) -> pa.Table:
    cols = ["speaker_id", "f0_mean_hz", "f0_range_st", "energy_mean_db", "energy_range_db", "speech_rate_sps"]
    return pa.table({c: [r.get(c) for r in rows] for c in cols})


def test_z_scores_are_against_the_speakers_own_utterances() -> None:
    a = [{"speaker_id": "a", "f0_mean_hz": f, "energy_mean_db": e} for f, e in
         [(100, 50), (110, 52), (120, 54), (130, 56), (140, 58)]]  # fmt: skip
    b = [{"speaker_id": "b", "f0_mean_hz": 2 * f, "energy_mean_db": e} for f, e in
         [(100, 60), (110, 60), (120, 60), (130, 60), (140, 60)]]  # fmt: skip
    norms = speaker_norms([_table(a[:2]), _table(a[2:] + b)])  # statistics gather across tables (chunks)
    st = 12 * np.log2([100, 110, 120, 130, 140])
    z = z_scores({"speaker_id": "a", "f0_mean_hz": 140.0, "energy_mean_db": 58.0}, norms)
    assert z["f0_mean_z"] == pytest.approx((st[-1] - st.mean()) / st.std(ddof=1))
    assert z["energy_mean_z"] == pytest.approx((58 - 54) / np.std([50, 52, 54, 56, 58], ddof=1))
    # b speaks an octave higher, yet the same relative position gives the same pitch z-score
    assert z_scores({"speaker_id": "b", "f0_mean_hz": 280.0}, norms)["f0_mean_z"] == pytest.approx(z["f0_mean_z"])
    assert z_scores({"speaker_id": "b", "energy_mean_db": 60.0}, norms)["energy_mean_z"] is None  # no spread
    assert z["speech_rate_z"] is None  # no rate measured for anyone
    few = speaker_norms([_table(a[: MIN_UTTERANCES - 1])])
    assert z_scores({"speaker_id": "a", "f0_mean_hz": 120.0}, few)["f0_mean_z"] is None
    assert digest(norms, ["a"]) != digest(norms, ["b"]) and digest(norms, ["a"]) == digest(norms, ["a", "a"])


def test_cue_words_follow_the_documented_thresholds() -> None:
    row = {"f0_mean_z": RELATIVE_Z + 0.01, "energy_mean_z": -RELATIVE_Z, "speech_rate_z": RELATIVE_Z - 0.01,
           "f0_range_z": None, "f0_slope_st_per_s": FALLING_ST_PER_S, "pause_longest_s": 0.6, "flags": [],
           "transcript": "we open the door", "emphasis_measured": [{"index": 3, "word": "door"}]}  # fmt: skip
    assert describe(row) == ["pitch: high", "loudness: quiet", "rate: normal", "pitch contour: falling",
                             "pauses: long", "emphasis on 'door'"]  # fmt: skip
    declining = {"flags": [], "f0_slope_st_per_s": (FALLING_ST_PER_S + RISING_ST_PER_S) / 2}
    assert describe(declining) == [] and describe({**declining, "f0_slope_st_per_s": RISING_ST_PER_S}) == [
        "pitch contour: rising"
    ]
    whisper = {"flags": [NO_F0], "transcript": "hello", "f0_slope_st_per_s": None}
    assert describe(whisper) == ["voice: whispered"]
    assert describe({"flags": [NO_F0, "no_speech"], "transcript": ""}) == []
    assert {r["cue"] for r in rules()} >= {"pitch", "loudness", "rate", "pauses", "voice"}


def test_describe_row_writes_z_scores_and_words_together() -> None:
    rows = [{"speaker_id": "s", "f0_mean_hz": 100.0 + 10 * i, "energy_mean_db": 50.0 + i} for i in range(6)]
    norms = speaker_norms([_table(rows)])
    out = describe_row({**rows[-1], "flags": [], "emphasis_measured": []}, norms)
    assert out["f0_mean_z"] > RELATIVE_Z and "pitch: high" in out["cue_words"] and "loudness: loud" in out["cue_words"]
    assert not any(isinstance(v, float) and math.isnan(v) for v in out.values())
