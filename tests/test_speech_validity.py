"""Validity on real speech: the measured cues must tell RAVDESS's emotions and intensities apart.

What we saw on the 1,200 clips (pitch/energy z-scores against each actor's own clips, medians):
angry +0.66/+1.26, fearful +0.65/+0.45, surprised +0.41/+0.10, happy +0.24/+0.42, disgusted -0.49/-0.32,
sad -0.44/-0.69, neutral -0.90/-0.76, calm -1.04/-1.15; strong intensity +0.66/+0.57 against normal
-0.59/-0.47. For every one of the 20 actors, angry and happy clips are higher in both than calm and
neutral ones, and strong clips higher than normal ones. The test asks for "most actors" (16 of 20)
so that a cue extractor that is right only on average fails it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from build_helpers import shard_rows

from pallm import pipeline
from pallm.config import BuildConfig, CorpusSpec

MOST = 16


@pytest.fixture(scope="module")
def measured(ravdess16k: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("validity") / "out"
    cfg = BuildConfig(
        corpora=[CorpusSpec(name="ravdess", path=ravdess16k)], out=out, asr="none", teacher="none", workers=2
    )
    plan = pipeline.plan(cfg)
    pipeline.prepare_output(out)
    with ThreadPoolExecutor(2) as pool:
        results = pipeline.run_chunks(plan, out, pool.map)
    pipeline.finalize(plan, results, out)
    cols = ["speaker_id", "emotion", "intensity", "f0_mean_z", "energy_mean_z", "cue_words", "flags"]
    return pd.DataFrame(shard_rows(out, cols))


def actors_where(df: pd.DataFrame, column: str, high: set[str], low: set[str], by: str) -> int:
    picked = df[df[by].isin(high | low)].assign(group=lambda d: d[by].isin(high))
    means = picked.groupby(["speaker_id", "group"])[column].mean().unstack()
    return int((means[True] > means[False]).sum())


def test_every_clip_is_measured(measured: pd.DataFrame) -> None:
    assert len(measured) == 1200
    assert measured["f0_mean_z"].notna().mean() > 0.99 and measured["energy_mean_z"].notna().all()


@pytest.mark.parametrize("cue", ["f0_mean_z", "energy_mean_z"])
def test_angry_and_happy_sound_higher_than_calm_and_neutral(measured: pd.DataFrame, cue: str) -> None:
    assert actors_where(measured, cue, {"angry", "happy"}, {"calm", "neutral"}, "emotion") >= MOST


@pytest.mark.parametrize("cue", ["f0_mean_z", "energy_mean_z"])
def test_strong_intensity_sounds_higher_than_normal(measured: pd.DataFrame, cue: str) -> None:
    assert actors_where(measured, cue, {"strong"}, {"normal"}, "intensity") >= MOST


def test_cue_words_pick_out_aroused_speech(measured: pd.DataFrame) -> None:
    def share(word: str, emotions: set[str]) -> float:
        part = measured[measured["emotion"].isin(emotions)]
        return part["cue_words"].apply(lambda ws: word in list(ws)).mean()

    for word in ("pitch: high", "loudness: loud"):
        assert share(word, {"angry", "happy", "fearful", "surprised"}) > 3 * share(word, {"calm", "neutral"}), word
    assert share("loudness: quiet", {"calm", "neutral", "sad"}) > 3 * share("loudness: quiet", {"angry"})
