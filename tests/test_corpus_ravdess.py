"""RAVDESS adapter on the real clips: labels from file names, folds, quarantine of bad names."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from pallm.corpora import get_adapter
from pallm.corpora.base import Quarantined
from pallm.corpora.ravdess import EMOTIONS, STATEMENTS, parse_name

ADAPTER = get_adapter("ravdess")


def scan(root: Path, **options: object) -> tuple[list[dict], list[Quarantined]]:
    items = list(ADAPTER.scan(root, ADAPTER.options.model_validate(options)))
    return [i for i in items if isinstance(i, dict)], [i for i in items if isinstance(i, Quarantined)]


def test_real_clips_labels_match_file_names(ravdess16k: Path) -> None:
    rows, bad = scan(ravdess16k)
    assert len(rows) == 1200 and bad == []
    for r in rows:
        _mm, _vv, ee, ii, ss, rr, aa = (int(p) for p in Path(r["audio_path"]).stem.split("-"))
        assert r["id"] == f"ravdess/{Path(r['audio_path']).stem}"
        assert r["emotion_native"] == EMOTIONS[ee]
        assert r["intensity"] == ("normal", "strong")[ii - 1]
        assert r["transcript_ref"] == STATEMENTS[ss]
        assert (r["statement"], r["repetition"]) == (ss, rr)
        assert r["speaker_id"] == f"ravdess/actor{aa:02d}"
        assert r["gender"] == ("male" if aa % 2 else "female")
        assert r["fold"] == (aa - 1) // 4 + 1
    by_emotion = Counter(r["emotion_native"] for r in rows)
    # 60 clips per actor: 4 neutral, 8 of each other emotion.
    assert by_emotion == {"neutral": 80, **{e: 160 for e in EMOTIONS.values() if e != "neutral"}}
    assert Counter(r["sentiment"] for r in rows) == {"negative": 640, "positive": 320, "neutral": 240}
    assert {r["emotion"] for r in rows if r["emotion_native"] == "disgust"} == {"disgusted"}


def test_splits_are_speaker_independent(ravdess16k: Path) -> None:
    rows, _ = scan(ravdess16k)
    speakers = {s: {r["speaker_id"] for r in rows if r["split"] == s} for s in ("train", "validation", "test")}
    assert speakers["test"] == {f"ravdess/actor{a:02d}" for a in (1, 2, 3, 4)}
    assert speakers["validation"] == {f"ravdess/actor{a:02d}" for a in (5, 6, 7, 8)}
    assert not (speakers["train"] & speakers["test"]) and not (speakers["train"] & speakers["validation"])
    rows, _ = scan(ravdess16k, test_folds=[5], validation_folds=[])
    assert {r["speaker_id"] for r in rows if r["split"] == "test"} == {f"ravdess/actor{a}" for a in (17, 18, 19, 20)}


def test_ids_are_stable_across_scans_and_locations(ravdess16k: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "RAVDESS"
    shutil.copytree(ravdess16k / "Actor_03", copy / "Actor_03")
    a, _ = scan(ravdess16k)
    b, _ = scan(copy)
    by_id = {r["id"]: r for r in a}
    assert b and all(
        {k: v for k, v in r.items() if k != "_source"} == {k: v for k, v in by_id[r["id"]].items() if k != "_source"}
        for r in b
    )


@pytest.mark.parametrize(
    ("stem", "message"),
    [
        ("03-01-09-01-01-01-01", "emotion code 09 out of range"),
        ("03-01-01-02-01-01-01", "neutral has no strong intensity"),
        ("03-01-05-01-01-01-25", "actor code 25 out of range"),
        ("03-01-05-01", "is not MM-VV-EE-II-SS-RR-AA"),
        ("02-01-05-01-01-01-01", "video-only"),
    ],
)
def test_bad_names_are_quarantined(ravdess16k: Path, tmp_path: Path, stem: str, message: str) -> None:
    (tmp_path / "Actor_01").mkdir()
    good = sorted((ravdess16k / "Actor_01").glob("*.wav"))[0]
    shutil.copy(good, tmp_path / "Actor_01" / good.name)
    shutil.copy(good, tmp_path / "Actor_01" / f"{stem}.wav")
    rows, bad = scan(tmp_path)
    assert [r["id"] for r in rows] == [f"ravdess/{good.stem}"]
    assert len(bad) == 1 and bad[0].path == f"Actor_01/{stem}.wav" and message in bad[0].reason
    assert bad[0].stage == "ingest"


def test_song_is_opt_in(ravdess16k: Path, tmp_path: Path) -> None:
    good = sorted((ravdess16k / "Actor_02").glob("*.wav"))[0]
    song = "03-02-03-01-01-01-02"
    shutil.copy(good, tmp_path / f"{song}.wav")
    assert scan(tmp_path) == ([], [])
    rows, _ = scan(tmp_path, include_song=True)
    assert [(r["vocal_channel"], r["emotion_native"]) for r in rows] == [("song", "happy")]


def test_parse_name_decodes_every_field() -> None:
    assert parse_name("03-01-06-02-02-01-12") == dict(
        modality=3, channel=1, emotion=6, intensity=2, statement=2, repetition=1, actor=12
    )
