"""Diarization inside a build: a recording of two speakers is cut at speaker turns, and no word is lost.

The diarizer is a tiny randomly initialised pyannote pipeline (no real weights exist offline), so which
turn gets which word is arbitrary; what is checked is what must hold for any diarizer.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from build_helpers import build, shard_rows
from speech_models import build_tiny_diarizer

from pallm.config import BuildConfig, CorpusSpec, SpeechConfig

pytest.importorskip("whisperx", reason="the speech extra is not installed: pip install -e '.[asr]'")


@pytest.fixture(scope="module")
def corpus(ravdess16k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("conversations")
    a = sf.read(ravdess16k / "Actor_01" / "03-01-05-02-01-01-01.wav", dtype="float32")[0]
    b = sf.read(ravdess16k / "Actor_02" / "03-01-03-02-02-01-02.wav", dtype="float32")[0]
    sf.write(root / "talk.wav", np.concatenate([a, b]), 16_000)
    sf.write(root / "alone.wav", a, 16_000)
    (root / "list.csv").write_text("path,label,speaker,text\ntalk.wav,angry,session1,\nalone.wav,angry,session2,\n")
    return root


def config(corpus: Path, out: Path, diarizer: Path | None) -> BuildConfig:
    speech = SpeechConfig(diarize_model=str(diarizer) if diarizer else None, min_speakers=2)
    return BuildConfig(name="talk", corpora=[CorpusSpec(name="manifest", path=corpus / "list.csv")], out=out,
                       asr="tiny.en", teacher="none", speech=speech, workers=1)  # fmt: skip


def test_recordings_are_cut_at_speaker_turns_without_losing_words(corpus: Path, tmp_path: Path) -> None:
    diarizer = build_tiny_diarizer(tmp_path / "tiny-pipeline")
    build(config(corpus, tmp_path / "whole", None))
    whole = {r["id"]: r for r in shard_rows(tmp_path / "whole")}
    build(config(corpus, tmp_path / "cut", diarizer))
    turns = sorted(shard_rows(tmp_path / "cut"), key=lambda r: r["id"])
    for recording in ("manifest/talk", "manifest/alone"):
        mine = [r for r in turns if r["id"].startswith(recording + "@")]
        assert len(mine) >= 1 and len({r["id"] for r in mine}) == len(mine)
        mine.sort(key=lambda r: r["start_s"])
        # every word of the whole-recording transcript lands in exactly one turn, in order
        assert [w["word"] for r in mine for w in r["words"]] == [w["word"] for w in whole[recording]["words"]]
        speaker = whole[recording]["speaker_id"]
        for r in mine:
            assert r["speaker_id"].startswith(speaker + "/SPEAKER_")
            audio, rate = sf.read(io.BytesIO(r["audio"]["bytes"]))
            assert rate == 16_000 and len(audio) / rate == pytest.approx(r["duration_s"], abs=1e-3)
            assert r["end_s"] - r["start_s"] == pytest.approx(r["duration_s"], abs=2e-3)
            assert 0 <= r["start_s"] < r["end_s"] <= whole[recording]["duration_s"] + 1e-3
            assert all(0 <= w["start"] <= w["end"] <= r["duration_s"] + 1e-3 for w in r["words"])
            assert r["transcript"] == " ".join(w["word"] for w in r["words"]) and r["asr_wer"] is None
    talk = [r for r in turns if r["id"].startswith("manifest/talk@")]
    assert len({r["speaker_id"] for r in talk}) == 2  # min_speakers=2 reaches the pipeline
    build(config(corpus, tmp_path / "again", diarizer))
    assert sorted(r["id"] for r in shard_rows(tmp_path / "again")) == [r["id"] for r in turns]  # stable ids
