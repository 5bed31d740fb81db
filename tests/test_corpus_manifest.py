"""The manifest adapter: CSV and JSONL manifests, every bad line quarantined with its line number."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pallm.corpora import get_adapter
from pallm.corpora import manifest as mf
from pallm.corpora.base import SOURCE_KEY, CorpusError, Quarantined
from pallm.schema import UTTERANCE_COLUMNS

ODD = "clips/ünïcode dir/é à 1.wav"  # spaces and non-ASCII characters


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000, subtype="PCM_16")
    return path


@pytest.fixture()
def audio(tmp_path: Path) -> Path:
    """A corpus folder with four tiny WAVs, one under a path with spaces and non-ASCII characters."""
    for rel in ("clips/a.wav", "clips/b.wav", "clips/c.WAV", ODD):
        _wav(tmp_path / rel)
    return tmp_path


def _split(items: list) -> tuple[list[dict], list[Quarantined]]:
    rows = [r for r in items if isinstance(r, dict)]
    bad = [r for r in items if isinstance(r, Quarantined)]
    assert len(rows) + len(bad) == len(items)
    return rows, bad


def test_csv_manifest_yields_rows(audio: Path) -> None:
    outside = _wav(audio.parent / f"{audio.name}-outside" / "x.wav")
    (audio / "m.csv").write_text(
        "Path,LABEL,speaker,text,gender,extra\n"
        'clips/a.wav,happy,s1,"Hello, there",F,ignored\n'
        f"{ODD},Sad,s2,,male,\n"
        f"{audio / 'clips/b.wav'},neutral,s1,,,\n"
        f"{outside},angry,s3,,,\n",
        encoding="utf-8",
    )
    rows, bad = _split(list(mf.scan(audio / "m.csv", mf.ManifestOptions())))
    assert len(rows) == 3
    a, odd, b = rows
    assert set(UTTERANCE_COLUMNS) <= set(a)
    assert a["id"] == "manifest/clips/a" and a["audio_path"] == "clips/a.wav"
    assert (a["emotion"], a["sentiment"], a["gender"]) == ("happy", "positive", "female")
    assert a["transcript_ref"] == "Hello, there"
    assert a["speaker_id"] == "manifest/s1" and a[SOURCE_KEY] == str(audio / "clips/a.wav")
    assert odd["id"] == "manifest/clips/ünïcode dir/é à 1" and odd["audio_path"] == ODD
    assert (odd["emotion_native"], odd["emotion"], odd["sentiment"]) == ("Sad", "sad", "negative")
    assert odd["gender"] == "male"
    assert odd["transcript_ref"] is None
    # an absolute path inside the manifest's folder still gets a relative, machine-independent id
    assert b["id"] == "manifest/clips/b" and b["audio_path"] == "clips/b.wav" and b["gender"] == "unknown"
    # an absolute path outside it would make a machine-dependent id: quarantined, asking for an id
    assert [(q.path, q.reason) for q in bad] == [
        (
            str(outside),
            f"m.csv line 5: path {str(outside)!r} is outside the manifest's folder: give the line an `id` "
            "so the utterance id does not depend on this machine's folders",
        )
    ]


def test_jsonl_manifest_yields_rows_with_given_ids_and_splits(audio: Path) -> None:
    lines = [
        {"path": "clips/a.wav", "label": "happy", "speaker": "s1", "id": "utt-1", "split": "train", "text": "hi"},
        {"path": ODD, "label": "fearful", "speaker": 7, "id": "utt-2", "split": "dev"},
        {"path": str(audio / "clips/c.WAV"), "label": "calm", "speaker": "s2", "id": "utt-3", "split": "test"},
    ]
    (audio / "m.jsonl").write_text(
        "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n", encoding="utf-8"
    )
    rows, bad = _split(list(get_adapter("manifest").scan(audio / "m.jsonl", mf.ManifestOptions())))
    assert bad == []
    assert [(r["id"], r["split"], r["fold"]) for r in rows] == [
        ("manifest/utt-1", "train", None), ("manifest/utt-2", "validation", None), ("manifest/utt-3", "test", None),
    ]  # fmt: skip
    assert rows[1]["speaker_id"] == "manifest/7" and rows[1]["audio_path"] == ODD
    assert rows[0]["transcript_ref"] == "hi"


def test_every_bad_jsonl_line_is_quarantined_with_its_line_number(audio: Path) -> None:
    ok = {"path": "clips/a.wav", "label": "happy", "speaker": "s1"}
    text = "\n".join([
        json.dumps(ok),                                                          # 1 ok
        '{"path": "clips/b.wav", "label": "sad"',                                # 2 malformed
        json.dumps({"path": "clips/b.wav", "label": "sad"}),                     # 3 no speaker
        json.dumps({"path": "clips/b.wav", "label": "joy", "speaker": "s1"}),    # 4 unknown label
        json.dumps({"path": "clips/zz.wav", "label": "sad", "speaker": "s1"}),   # 5 not found
        "",                                                                      # 6 blank: skipped
        json.dumps(ok),                                                          # 7 duplicate id
        "[1, 2]",                                                                # 8 not an object
        json.dumps({"path": "clips/b.wav", "label": "sad", "speaker": "s1", "gender": "x"}),  # 9 bad gender
        json.dumps({"path": ["clips/b.wav"], "label": "sad", "speaker": "s1"}),  # 10 path not text
        json.dumps({"path": "clips/b.wav", "label": "sad", "speaker": "s2"}),    # 11 ok
    ])  # fmt: skip
    (audio / "m.jsonl").write_text(text, encoding="utf-8")
    rows, bad = _split(list(mf.scan(audio / "m.jsonl", mf.ManifestOptions())))
    assert [r["id"] for r in rows] == ["manifest/clips/a", "manifest/clips/b"]
    assert [q.reason.split(":")[0] for q in bad] == [f"m.jsonl line {n}" for n in (2, 3, 4, 5, 7, 8, 9, 10)]
    reasons = {int(q.reason.split(":")[0].rsplit(" ", 1)[1]): q for q in bad}
    assert "not valid JSON" in reasons[2].reason and reasons[2].path == "m.jsonl:2" and reasons[2].id is None
    assert "missing required field(s) speaker" in reasons[3].reason and reasons[3].path == "clips/b.wav"
    assert "unknown manifest label 'joy'" in reasons[4].reason
    known = "angry, calm, confused, disgusted, fearful, frustrated, happy, neutral, sad, surprised"
    assert f"known: {known}" in reasons[4].reason
    assert "audio file not found: 'clips/zz.wav'" in reasons[5].reason and reasons[5].id == "manifest/clips/zz"
    assert "duplicate id 'clips/a' (first on line 1)" in reasons[7].reason and reasons[7].id == "manifest/clips/a"
    assert "expected a JSON object, got list" in reasons[8].reason
    assert "unknown gender 'x'" in reasons[9].reason
    assert "field 'path' must be text" in reasons[10].reason and reasons[10].path == "m.jsonl:10"
    assert all(q.corpus == "manifest" and q.stage == "ingest" for q in bad)


def test_every_bad_csv_line_is_quarantined_with_its_line_number(audio: Path) -> None:
    (audio / "m.csv").write_text(
        "path,label,speaker,text\n"               # 1
        "clips/a.wav,happy,s1,one\n"               # 2 ok
        'clips/b.wav,sad,s1,"two\nlines"\n'        # 3-4 ok: quoted newline
        "clips/c.WAV,,s2,\n"                       # 5 no label
        "clips/c.WAV,happy,s2,a,b\n"               # 6 too many fields
        "\n"                                       # 7 blank: skipped
        "clips/nope.wav,angry,s2\n"                # 8 not found (short row is fine)
        "clips/a.wav,happy,s3\n"                   # 9 duplicate
        "clips/c.WAV,bored,s2\n",                  # 10 unknown label
        encoding="utf-8",
    )  # fmt: skip
    rows, bad = _split(list(mf.scan(audio / "m.csv", mf.ManifestOptions())))
    assert [r["id"] for r in rows] == ["manifest/clips/a", "manifest/clips/b"]
    assert rows[1]["transcript_ref"] == "two\nlines"
    got = [(q.reason.split(":")[0], q.reason.split(": ", 1)[1]) for q in bad]
    expected = [
        ("m.csv line 5", "missing required field(s) label"),
        ("m.csv line 6", "5 fields but the header has 4; "),
        ("m.csv line 8", "audio file not found: 'clips/n"),
        ("m.csv line 9", "duplicate id 'clips/a' (first o"),
        ("m.csv line 10", "unknown manifest label 'bored';"),
    ]
    assert len(got) == len(expected)
    assert [
        (where, reason[: len(start)]) for (where, reason), (_, start) in zip(got, expected, strict=True)
    ] == expected


def test_splits_all_or_none(audio: Path) -> None:
    (audio / "m.csv").write_text(
        "path,label,speaker,split\nclips/a.wav,happy,s1,test\nclips/b.wav,happy,s1,\nclips/c.WAV,happy,s2,holdout\n",
        encoding="utf-8",
    )
    rows, bad = _split(list(mf.scan(audio / "m.csv", mf.ManifestOptions())))
    assert [(r["id"], r["split"]) for r in rows] == [("manifest/clips/a", "test")]
    assert [q.reason for q in bad] == [
        "m.csv line 3: no split while other lines give one; use train, validation or test on every line, "
        "or drop the split field everywhere",
        "m.csv line 4: unknown split 'holdout'; use train, validation or test on every line, "
        "or drop the split field everywhere",
    ]


def test_without_splits_speakers_are_hashed_into_stable_folds(tmp_path: Path) -> None:
    speakers = [f"spk{i}" for i in range(40)]
    lines = []
    for s in speakers:
        for k in range(2):
            _wav(tmp_path / s / f"{k}.wav")
            lines.append(json.dumps({"path": f"{s}/{k}.wav", "label": "neutral", "speaker": s}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines), encoding="utf-8")
    opts = mf.ManifestOptions(folds=4, test_folds=[3], validation_folds=[4])
    rows, bad = _split(list(mf.scan(tmp_path / "m.jsonl", opts)))
    assert bad == [] and len(rows) == 80
    by_speaker: dict[str, set[tuple[int, str]]] = {}
    for r in rows:
        by_speaker.setdefault(r["speaker_id"], set()).add((r["fold"], r["split"]))
    assert all(len(v) == 1 for v in by_speaker.values()), "a speaker spans folds"
    folds = {next(iter(v))[0] for v in by_speaker.values()}
    assert folds == {1, 2, 3, 4}
    for ((fold, split),) in by_speaker.values():
        assert split == {3: "test", 4: "validation"}.get(fold, "train")
    # pinned values: the fold must not depend on Python's per-process hash seed or the machine
    assert [mf.speaker_fold(s, 5) for s in ("spk0", "spk1", "alice", "bob", "carol", "dave")] == [3, 3, 3, 1, 3, 2]


def test_missing_or_wrong_manifest_raises_corpus_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        list(mf.scan(tmp_path / "nope.csv", mf.ManifestOptions()))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(CorpusError, match="is a folder"):
        list(mf.scan(tmp_path / "dir.csv", mf.ManifestOptions()))
    (tmp_path / "m.txt").write_text("path,label,speaker\n")
    with pytest.raises(CorpusError, match=r"\.csv or \.jsonl"):
        list(mf.scan(tmp_path / "m.txt", mf.ManifestOptions()))
    (tmp_path / "h.csv").write_text("file,label,spk\n")
    with pytest.raises(CorpusError, match=r"lacks column\(s\) path, speaker"):
        list(mf.scan(tmp_path / "h.csv", mf.ManifestOptions()))
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(CorpusError, match="is empty"):
        list(mf.scan(tmp_path / "e.csv", mf.ManifestOptions()))
    (tmp_path / "l.csv").write_bytes("path,label,speaker\ncaf\xe9.wav,sad,s\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"not UTF-8.*save it as UTF-8"):
        list(mf.scan(tmp_path / "l.csv", mf.ManifestOptions()))


def test_options_and_adapter() -> None:
    with pytest.raises(ValueError, match=r"outside 1\.\.3"):
        mf.ManifestOptions(folds=3, test_folds=[4])
    with pytest.raises(ValueError, match="both test and validation"):
        mf.ManifestOptions(test_folds=[1], validation_folds=[1])
    a = get_adapter("manifest")
    assert a is mf.ADAPTER and a.path_is_file and not a.synthetic and a.options is mf.ManifestOptions
