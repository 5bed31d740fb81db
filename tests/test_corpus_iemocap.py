"""The IEMOCAP adapter on a small tree in the real layout (tests/corpus_fixtures.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
from corpus_fixtures import assert_ids_stable, assert_quarantined_as_expected, make_iemocap_tree, scan_adapter

from pallm.corpora import get_adapter, iemocap
from pallm.corpora.base import SOURCE_KEY, CorpusError, Quarantined
from pallm.schema import UTTERANCE_COLUMNS, arrow_schema


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_iemocap_tree(tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release")


def _scan(root: Path, **options: Any) -> tuple[dict[str, dict[str, Any]], list[Quarantined]]:
    return scan_adapter("iemocap", root, **options)


def test_exactly_the_good_utterances_become_rows(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    assert sorted(rows) == sorted(tree["rows"])
    assert len(rows) == 8


def test_row_values_match_the_label_and_transcript_files(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    for rid, want in tree["rows"].items():
        got = {k: rows[rid][k] for k in want}
        assert got == want, rid
        assert rows[rid]["corpus"] == "iemocap"


def test_exc_is_hap_in_the_4class_view_but_keeps_its_own_label(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    exc = rows["iemocap/Ses01F_impro01_M000"]
    assert (exc["emotion_native"], exc["emotion_4class"], exc["emotion"], exc["sentiment"]) == (
        "exc", "hap", "happy", "positive",
    )  # fmt: skip
    fru, xxx = rows["iemocap/Ses01F_impro01_F004"], rows["iemocap/Ses01F_impro01_M001"]
    assert (fru["emotion_native"], fru["emotion_4class"], fru["emotion"]) == ("fru", None, "frustrated")
    assert (xxx["emotion_native"], xxx["emotion_4class"], xxx["emotion"], xxx["sentiment"]) == (
        "xxx",
        None,
        "unknown",
        None,
    )


def test_dimensional_ratings_and_times(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    ang = rows["iemocap/Ses01F_script01_1_F000"]
    assert (ang["valence"], ang["arousal"], ang["dominance"]) == (1.5, 4.0, 4.5)
    assert (ang["start_s"], ang["end_s"]) == (1.0, 3.25)
    neu = rows["iemocap/Ses01F_impro01_F000"]
    assert (neu["start_s"], neu["end_s"], neu["valence"]) == (6.2901, 8.2357, 2.5)


def test_speaker_is_the_letter_of_the_utterance_not_of_the_dialog(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    # Ses01F_* dialogs are led by the female actor, but *_M000 is spoken by the male one.
    assert rows["iemocap/Ses01F_impro01_M000"]["speaker_id"] == "iemocap/session1-M"
    assert rows["iemocap/Ses01F_impro01_M000"]["gender"] == "male"
    assert rows["iemocap/Ses05M_impro03_F000"]["speaker_id"] == "iemocap/session5-F"
    assert rows["iemocap/Ses05M_impro03_F000"]["gender"] == "female"


def test_transcripts_skip_non_utterance_lines(tree: dict[str, Any]) -> None:
    rows, bad = _scan(tree["root"])
    assert rows["iemocap/Ses01F_impro01_M001"]["transcript_ref"] == "Yeah."  # after the `M:` and MXX0 lines
    assert rows["iemocap/Ses01F_script01_1_M000"]["transcript_ref"] == "I'm sorry… really."
    assert rows["iemocap/Ses01F_impro01_F004"]["transcript_ref"] is None  # no transcript line: null, not quarantined
    assert not any("MXX0" in (q.id or "") + q.reason for q in bad)


def test_every_malformed_input_is_quarantined_with_an_actionable_reason(tree: dict[str, Any]) -> None:
    _, bad = _scan(tree["root"])
    assert_quarantined_as_expected(bad, tree)
    assert all(q.corpus == "iemocap" and q.stage == "ingest" for q in bad)


def test_a_bad_transcript_line_spoils_only_its_own_utterance(tree: dict[str, Any]) -> None:
    rows, bad = _scan(tree["root"])
    assert [q.id for q in bad if "transcriptions/" in q.reason] == ["iemocap/Ses01F_impro01_F001"]
    # the lines after the bad one in the same file still count
    assert rows["iemocap/Ses01F_impro01_M001"]["transcript_ref"] == "Yeah."


def test_leave_one_session_out_folds(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    assert {r["split"] for r in rows.values() if r["session"] == 5} == {"test"}
    assert {r["split"] for r in rows.values() if r["session"] == 1} == {"train"}
    assert all(r["fold"] == r["session"] for r in rows.values())
    rows, _ = _scan(tree["root"], test_folds=[1], validation_folds=[5])
    assert {r["split"] for r in rows.values() if r["session"] == 1} == {"test"}
    assert {r["split"] for r in rows.values() if r["session"] == 5} == {"validation"}


def test_four_class_only_keeps_the_standard_subset(tree: dict[str, Any]) -> None:
    rows, bad = _scan(tree["root"], four_class_only=True)
    assert sorted(rows) == sorted(k for k, v in tree["rows"].items() if v["emotion_4class"] is not None)
    assert {r["emotion_4class"] for r in rows.values()} == {"neu", "hap", "ang", "sad"}
    assert len(bad) == len(tree["quarantined_ids"]) + len(tree["quarantined_paths"])  # still reported


def test_ids_are_stable_across_scans_and_machines(tree: dict[str, Any], tmp_path: Path) -> None:
    assert_ids_stable("iemocap", tree["root"], tmp_path / "another disk é" / "IEMOCAP")


def test_rows_fit_the_arrow_schema(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    table = pa.Table.from_pylist(
        [{c: r[c] for c in UTTERANCE_COLUMNS} for r in rows.values()], schema=arrow_schema(UTTERANCE_COLUMNS)
    )
    assert table.num_rows == 8
    assert table.column("valence").type == pa.float32()


def test_fixture_audio_is_real_16k_speech_like_audio(tree: dict[str, Any]) -> None:
    rows, _ = _scan(tree["root"])
    for row in rows.values():
        info = sf.info(row[SOURCE_KEY])
        assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
        assert 0.5 <= info.duration <= 1.0
        x, _ = sf.read(row[SOURCE_KEY])
        assert np.sqrt(np.mean(x**2)) > 0.05


def test_missing_or_wrong_folder_raises_corpus_error(tree: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        list(iemocap.scan(tmp_path / "nowhere", iemocap.IemocapOptions()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"no Session1\.\.Session5"):
        list(iemocap.scan(tmp_path / "empty", iemocap.IemocapOptions()))
    broken = tmp_path / "broken"
    shutil.copytree(tree["root"], broken)
    shutil.rmtree(broken / "Session5" / "sentences")
    with pytest.raises(CorpusError, match="Session5/sentences/wav is missing"):
        list(iemocap.scan(broken, iemocap.IemocapOptions()))


def test_parse_utterance_id() -> None:
    assert iemocap.parse_utterance_id("Ses01F_script01_1_M012") == {
        "dialog": "Ses01F_script01_1", "session": 1, "part": "script", "gender": "M",
    }  # fmt: skip
    assert iemocap.parse_utterance_id("Ses03M_impro05b_F000")["dialog"] == "Ses03M_impro05b"
    assert iemocap.parse_utterance_id("Ses01F_impro01_MXX0") is None
    assert iemocap.parse_utterance_id("Ses01F_impro01_F000 copy") is None


def test_adapter_is_registered() -> None:
    adapter = get_adapter("iemocap")
    assert adapter is iemocap.ADAPTER
    assert adapter.options().test_folds == [5] and adapter.options().validation_folds == []
    assert adapter.homepage and adapter.citation and adapter.license
