"""The Expresso adapter on a small tree in the real layout (tests/corpus_fixtures.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
from corpus_fixtures import (
    EXPRESSO_RATE,
    assert_ids_stable,
    assert_quarantined_as_expected,
    make_expresso_tree,
    scan_adapter,
    voiced,
    write_wav,
)

from pallm.corpora import expresso, get_adapter
from pallm.corpora.base import SOURCE_KEY, CorpusError, Quarantined
from pallm.labels import map_label
from pallm.schema import UTTERANCE_COLUMNS, arrow_schema

#: Every style name of the release, as spelled in its folder and file names (split files, README tree).
REAL_STYLES = (
    "angry animal animaldir awe bored calm child childdir confused default desire disgusted enunciated fast "
    "fearful happy laughing narration nonverbal projected sad sarcastic singing sleepy sympathetic whisper"
).split()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_expresso_tree(tmp_path_factory.mktemp("expresso") / "expresso")


@pytest.fixture(scope="module")
def tree_without_splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_expresso_tree(tmp_path_factory.mktemp("expresso-nosplits") / "expresso", with_splits=False)


def _scan(root: Path, **options: Any) -> tuple[dict[str, dict[str, Any]], list[Quarantined]]:
    return scan_adapter("expresso", root, **options)


def test_exactly_the_expected_rows(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    assert sorted(rows) == sorted(tree["rows"])
    assert len(rows) == 7 + 2 * 4  # 7 read files, 4 dialogues x 2 channels; singing left out by default


def test_row_values(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    for rid, want in tree["rows"].items():
        got = {k: rows[rid][k] for k in want}
        assert got == want, rid
        assert rows[rid]["gender"] == "unknown"


def test_read_transcripts_lose_their_marks_and_keep_the_emphasis(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    row = rows["expresso/ex01_default_emphasis_00002"]
    assert row["transcript_ref"] == "Was this element always there?"
    assert row["emphasis"] == [
        {"index": 1, "word": "this"},
        {"index": 3, "word": "always"},
        {"index": 4, "word": "there?"},
    ]
    for row in rows.values():
        for e in row["emphasis"] or []:
            assert row["transcript_ref"].split()[e["index"]] == e["word"]
        assert "*" not in (row["transcript_ref"] or "")


def test_longform_may_lack_a_transcript_but_base_may_not(tree: dict[str, Any]) -> None:
    rows, bad = _scan(tree["root"])
    assert rows["expresso/ex01_default_longform_00001"]["transcript_ref"] is None
    assert rows["expresso/ex01_default_longform_00001"]["part"] == "longform"
    assert rows["expresso/ex02_default_longform_00001"]["transcript_ref"].startswith("Toxic chemicals")
    assert "expresso/ex02_sad_00003" in {q.id for q in bad}


def test_each_dialogue_gives_one_row_per_channel(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    ch0, ch1 = rows["expresso/ex03-ex02_sad-sympathetic_001/ch0"], rows["expresso/ex03-ex02_sad-sympathetic_001/ch1"]
    assert (ch0["channel"], ch0["speaker_id"], ch0["style"], ch0["emotion"]) == (0, "expresso/ex03", "sad", "sad")
    assert (ch1["channel"], ch1["speaker_id"], ch1["style"], ch1["emotion"]) == (
        1,
        "expresso/ex02",
        "sympathetic",
        "calm",
    )
    assert ch0["audio_path"] == ch1["audio_path"] and ch0[SOURCE_KEY] == ch1[SOURCE_KEY]
    assert ch0["dialog"] == ch1["dialog"] == "ex03-ex02_sad-sympathetic_001"
    same = [rows[f"expresso/ex03-ex01_nonverbal_001/ch{c}"] for c in (0, 1)]
    assert [(r["speaker_id"], r["style"]) for r in same] == [
        ("expresso/ex03", "nonverbal"),
        ("expresso/ex01", "nonverbal"),
    ]
    # the file really holds two different voices, one a channel
    x, rate = sf.read(ch0[SOURCE_KEY])
    assert rate == EXPRESSO_RATE and x.shape[1] == 2
    assert not np.allclose(x[:, 0], x[:, 1], atol=0.05)
    assert all(r["channel"] is None for r in rows.values() if r["part"] != "conversational")


def test_official_splits_with_the_most_held_out_segment_winning(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    split = {rid: r["split"] for rid, r in rows.items()}
    assert split["expresso/ex03-ex02_sad-sympathetic_001/ch0"] == "test"  # listed in train, dev and test
    assert split["expresso/ex01-ex02_default_001/ch1"] == "validation"  # listed in train and dev
    assert split["expresso/ex02_default_longform_00001"] == "test"
    assert split["expresso/ex04_confused_00001"] == "validation"
    assert split["expresso/ex04-ex01_animal-animaldir_005/ch0"] == "train"  # in no split file
    assert split["expresso/ex01_default_00001"] == "train"
    assert all(r["fold"] == int(r["speaker_id"][-2:]) for r in rows.values())


def test_speaker_folds_when_the_split_files_are_absent(tree_without_splits: dict[str, Any]) -> None:
    rows, bad = _scan(tree_without_splits["root"])
    assert sorted(rows) == sorted(tree_without_splits["rows"])
    for rid, want in tree_without_splits["rows"].items():
        assert rows[rid]["split"] == want["split"], rid
    assert {r["split"] for r in rows.values() if r["speaker_id"] == "expresso/ex04"} == {"test"}
    assert not any(q.path.startswith("splits/") for q in bad)
    rows, _ = _scan(tree_without_splits["root"], test_folds=[2], validation_folds=[1])
    by_speaker = {r["speaker_id"]: r["split"] for r in rows.values()}
    assert by_speaker == {"expresso/ex01": "validation", "expresso/ex02": "test", "expresso/ex03": "train",
                          "expresso/ex04": "train"}  # fmt: skip


def test_official_splits_can_be_turned_off(tree: dict[str, Any]) -> None:
    rows, bad = _scan(tree["root"], official_splits=False)
    assert rows["expresso/ex01_happy_00001"]["split"] == "train"  # test in splits/test.txt, but ex01 is fold 1
    assert rows["expresso/ex04_confused_00001"]["split"] == "test"
    assert not any(q.path.startswith("splits/") for q in bad)


def test_singing_is_one_mono_row_only_when_asked_for(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    assert tree["singing"]["id"] not in rows
    rows, _ = _scan(tree["root"], include_singing=True)
    row = rows[tree["singing"]["id"]]
    assert (row["style"], row["channel"], row["audio_path"], row["split"]) == (
        "singing", None, tree["singing"]["audio_path"], "train",
    )  # fmt: skip
    assert sf.info(row[SOURCE_KEY]).channels == 1
    assert len(rows) == len(tree["rows"]) + 1


def test_every_malformed_input_is_quarantined_with_an_actionable_reason(tree: dict[str, Any]) -> None:
    _, bad = _scan(tree["root"])
    assert_quarantined_as_expected(bad, tree)
    assert all(q.corpus == "expresso" and q.stage == "ingest" for q in bad)


def test_an_unknown_style_folder_is_quarantined_not_guessed(tree: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "expresso"
    shutil.copytree(tree["root"], root)
    # "neutral" is a unified emotion word the shared label rows accept; it is no Expresso style.
    write_wav(root / "audio_48khz/conversational/ex01-ex02/neutral/ex01-ex02_neutral_001.wav", EXPRESSO_RATE,
              voiced(0.5, EXPRESSO_RATE, 120, 1), voiced(0.5, EXPRESSO_RATE, 200, 2))  # fmt: skip
    rows, bad = _scan(root)
    assert not any("neutral_001" in rid for rid in rows)
    reasons = {q.id: q.reason for q in bad}
    assert "unknown style 'neutral'" in reasons["expresso/ex01-ex02_neutral_001/ch0"]
    assert "ex01-ex02/neutral/ex01-ex02_neutral_001.wav" in reasons["expresso/ex01-ex02_neutral_001/ch1"]


def test_every_real_style_name_has_its_own_label_row() -> None:
    for style in REAL_STYLES:
        assert map_label("expresso", style).corpus == "expresso", style
    assert set(REAL_STYLES) <= expresso.STYLES
    assert len(REAL_STYLES) == 26


def test_ids_are_stable_across_scans_and_machines(tree: dict[str, Any], tmp_path: Path) -> None:
    assert_ids_stable("expresso", tree["root"], tmp_path / "dossier partagé" / "expresso")


def test_rows_fit_the_arrow_schema(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"], include_singing=True)
    table = pa.Table.from_pylist(
        [{c: r[c] for c in UTTERANCE_COLUMNS} for r in rows.values()], schema=arrow_schema(UTTERANCE_COLUMNS)
    )
    emphasis = table.column("emphasis").to_pylist()[table.column("id").to_pylist().index("expresso/ex01_happy_00001")]
    assert emphasis[3] == {"index": 4, "word": "de-light."}


def test_fixture_audio_is_real_48k_audio(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    for row in rows.values():
        info = sf.info(row[SOURCE_KEY])
        assert (info.samplerate, info.subtype) == (48_000, "PCM_16")
        assert info.channels == (2 if row["part"] == "conversational" else 1)
        assert 0.5 <= info.duration <= 1.0
        x, _ = sf.read(row[SOURCE_KEY])
        assert np.sqrt(np.mean(x**2)) > 0.05


@pytest.mark.parametrize(
    ("text", "plain", "emphasis"),
    [
        ("No marks here.", "No marks here.", []),
        ("*Sit down*, miss.", "Sit down, miss.", [{"index": 0, "word": "Sit"}, {"index": 1, "word": "down,"}]),
        ("It barks with *de-light*.", "It barks with de-light.", [{"index": 3, "word": "de-light."}]),
        ("Mr Mason is claiming unfair *dismissal.*", "Mr Mason is claiming unfair dismissal.",
         [{"index": 5, "word": "dismissal."}]),
        ("a ** b", "a  b", []),
    ],
)  # fmt: skip
def test_parse_emphasis(text: str, plain: str, emphasis: list[dict[str, Any]]) -> None:
    assert expresso.parse_emphasis(text) == (plain, emphasis)


def test_parse_emphasis_rejects_unbalanced_marks() -> None:
    with pytest.raises(ValueError, match="odd number"):
        expresso.parse_emphasis("The *rough cotton pants.")


def test_layout_errors_raise_corpus_error(tree: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        list(expresso.scan(tmp_path / "nowhere", expresso.ExpressoOptions()))
    parent = tmp_path / "download"
    shutil.copytree(tree["root"], parent / "expresso")
    with pytest.raises(CorpusError, match="one level down"):
        list(expresso.scan(parent, expresso.ExpressoOptions()))
    no_text = tmp_path / "no_text"
    shutil.copytree(tree["root"], no_text)
    (no_text / "read_transcriptions.txt").unlink()
    with pytest.raises(CorpusError, match=r"read_transcriptions\.txt is missing"):
        list(expresso.scan(no_text, expresso.ExpressoOptions()))
    no_dev = tmp_path / "no_dev"
    shutil.copytree(tree["root"], no_dev)
    (no_dev / "splits" / "dev.txt").unlink()
    with pytest.raises(CorpusError, match=r"lacks dev\.txt"):
        list(expresso.scan(no_dev, expresso.ExpressoOptions()))
    assert list(expresso.scan(no_dev, expresso.ExpressoOptions(official_splits=False)))


def test_adapter_is_registered() -> None:
    adapter = get_adapter("expresso")
    assert adapter is expresso.ADAPTER
    assert adapter.license == "CC BY-NC 4.0"
    assert adapter.options().test_folds == [4] and adapter.options().include_singing is False
