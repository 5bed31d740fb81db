"""A whole build without Prefect: shards, manifest, quarantine, card, cache, reruns, datasets loading."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from build_helpers import BAD_AUDIO, BAD_NAMES, CONVERTED, build, make_tree, shard_rows
from reliability import Ledger

from pallm import pipeline
from pallm.config import BuildConfig, CorpusSpec, ShardConfig
from pallm.corpora import CorpusError
from pallm.dataset import read_manifest
from pallm.schema import COLUMN_NAMES, SCHEMA_VERSION
from pallm.shards import TMP_PREFIX, sha256_file


@pytest.fixture()
def tree(ravdess16k: Path, tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "ravdess"
    return root, make_tree(ravdess16k, root)


def config(root: Path, out: Path, **kw: object) -> BuildConfig:
    return BuildConfig(
        name="t", corpora=[CorpusSpec(name="ravdess", path=root)], out=out,
        shards=ShardConfig(chunk_rows=4), workers=2, **{"asr": "none", "teacher": "none", **kw},
    )  # fmt: skip


@pytest.mark.reliability
def test_build_writes_good_rows_and_quarantines_bad_ones(
    tree: tuple[Path, dict], tmp_path: Path, ledger: Ledger
) -> None:
    root, expect = tree
    out = tmp_path / "out"
    build(config(root, out))
    rows = shard_rows(out)
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(expect["good"]) and len(ids) == len(set(ids))
    assert set(rows[0]) == set(COLUMN_NAMES)
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    by_id = {q["id"]: q for q in quarantine if q["id"]}
    for id_, reason in expect["bad_audio"].items():
        assert by_id[id_]["stage"] == "audio" and reason in by_id[id_]["reason"], by_id.get(id_)
    named = [q for q in quarantine if q["stage"] == "ingest"]
    assert [(Path(q["path"]).stem, BAD_NAMES[Path(q["path"]).stem] in q["reason"]) for q in named] == [
        (s, True) for s in BAD_NAMES
    ]
    assert len(quarantine) == len(expect["bad_audio"]) + len(BAD_NAMES)
    kinds = ", ".join(kind for kind, _ in BAD_AUDIO.values())
    ledger.record("bad inputs: one corpus", f"{len(BAD_AUDIO)} broken files ({kinds}), {len(BAD_NAMES)} misnamed",
                  items=len(expect["good"]) + len(BAD_AUDIO) + len(BAD_NAMES), delivered=len(set(ids)),
                  quarantined=len(quarantine), duplicates=len(ids) - len(set(ids)))  # fmt: skip
    for r in rows:
        if r["id"].removeprefix("ravdess/") in CONVERTED:
            subtype, rate, channels = CONVERTED[r["id"].removeprefix("ravdess/")]
            assert (r["source_sample_rate"], r["source_channels"], r["source_format"]) == (
                rate,
                channels,
                f"WAV/{subtype}",
            )
            assert r["duration_s"] == pytest.approx(1.2, abs=0.002)
        assert r["audio"]["bytes"][:4] == b"RIFF" and r["schema_version"] == SCHEMA_VERSION


def test_manifest_checksums_and_card(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, expect = tree
    out = tmp_path / "out"
    build(config(root, out, cards_index=tmp_path / "cards"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == len(expect["good"]) and manifest["quarantined"] == len(expect["bad_audio"]) + len(
        BAD_NAMES
    )
    for s in manifest["shards"]:
        assert sha256_file(out / s["path"]) == s["sha256"] and pq.read_metadata(out / s["path"]).num_rows == s["rows"]
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted(Path(s["path"]).name for s in manifest["shards"])
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    listed = {p for split in header["configs"][0]["data_files"] for p in split["path"]}
    assert listed == {s["path"] for s in manifest["shards"]}
    assert {d["split"] for d in header["configs"][0]["data_files"]} == {"train", "validation", "test"}
    assert header["license"] == "cc-by-nc-sa-4.0" and "audio-classification" in header["task_categories"]
    # numbers in the card come from the data
    assert re.search(rf"\| ravdess \| {len(expect['good'])} \|", card)
    assert "| ravdess | disgust | disgusted | negative |" in card
    assert f"### Quarantined items: {manifest['quarantined']}" in card and "too long" in card and "empty file" in card
    assert (out / "card" / "emotions.png").stat().st_size > 5_000
    index = json.loads((tmp_path / "cards" / "index.json").read_text())
    assert [(e["name"], e["version"], e["rows"]) for e in index] == [("t", manifest["version"], manifest["rows"])]
    assert (tmp_path / "cards" / f"t-{manifest['version']}.md").read_text() == card


def test_rerun_reuses_every_chunk_and_changes_nothing(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tree
    out = tmp_path / "out"
    build(config(root, out))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    plan, results = build(config(root, out))
    assert all(r.cached for r in results) and pipeline.is_finalized(plan, out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_changed_input_rebuilds_only_its_chunk_and_drops_stale_shards(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, expect = tree
    out = tmp_path / "out"
    build(config(root, out))
    measured = {p.name: p.stat().st_mtime_ns for p in (out / ".pallm" / "measured").glob("*.parquet")}
    victim = sorted((root / "Actor_05").glob("*.wav"))[0]
    victim.unlink()
    (out / "data" / ".tmp-leftover.parquet.x").write_bytes(b"half a shard")
    _, second = build(config(root, out))
    # Chunk boundaries depend on ids: only the chunk that held the clip is measured again (or disappears).
    # (Describing may run again wherever the corpus-wide lexical probe, retrained without the clip,
    # changed its verdicts; that pass reads no audio.)
    after = {p.name: p.stat().st_mtime_ns for p in (out / ".pallm" / "measured").glob("*.parquet")}
    assert sum(measured.get(n) != t for n, t in after.items()) <= 1 and len(after) >= len(measured) - 1
    ids = [r["id"] for r in shard_rows(out, ["id"])]
    assert sorted(ids) == sorted(expect["good"] - {f"ravdess/{victim.stem}"})
    manifest = read_manifest(out)
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted(Path(s["path"]).name for s in manifest["shards"])
    assert len(list((out / ".pallm" / "chunks").iterdir())) == len(second)


def test_stage_config_change_invalidates_every_chunk(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tree
    out = tmp_path / "out"
    build(config(root, out))
    cfg = config(root, out)
    cfg.audio.silence_dbfs = -70.0
    _, results = build(cfg)
    assert not any(r.cached for r in results)


def test_limit_takes_the_first_ids_per_corpus(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tree
    plan = pipeline.plan(config(root, tmp_path / "out", limit=5))
    everything = pipeline.plan(config(root, tmp_path / "out"))
    first5 = sorted(r["id"] for c in everything.chunks for r in c.rows)
    planned = sorted(r["id"] for c in plan.chunks for r in c.rows)
    assert planned == first5[:5]


def test_missing_or_unknown_corpus_stops_at_once(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        pipeline.plan(BuildConfig(corpora=[CorpusSpec(name="ravdess", path=tmp_path / "nope")], out=tmp_path / "o"))
    with pytest.raises(CorpusError, match=r"unknown corpus 'ravdes'.*ravdess"):
        pipeline.plan(BuildConfig(corpora=[CorpusSpec(name="ravdes", path=tmp_path)], out=tmp_path / "o"))


def test_shards_roll_over_at_the_size_bound(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, expect = tree
    out = tmp_path / "out"
    cfg = config(root, out)
    cfg.shards = ShardConfig(chunk_rows=64, max_shard_mb=0.15, row_group_rows=1)
    build(cfg)
    manifest = read_manifest(out)
    assert len(manifest["shards"]) > 3
    biggest_row = max(len(r["audio"]["bytes"]) for r in shard_rows(out, ["audio"]))
    assert all(s["bytes"] <= 0.15 * 2**20 + biggest_row + 64_000 for s in manifest["shards"])
    assert sum(s["rows"] for s in manifest["shards"]) == len(expect["good"])


def test_datasets_load_dataset_decodes_the_audio(tree: tuple[Path, dict], tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="the hf extra (pip install -e '.[hf]') is not installed")
    root, expect = tree
    out = tmp_path / "out"
    build(config(root, out))
    ds = datasets.load_dataset(str(out))
    assert set(ds) == {"train", "validation", "test"}
    assert sum(len(ds[s]) for s in ds) == len(expect["good"])
    assert isinstance(ds["train"].features["audio"], datasets.Audio)
    for split in ds:
        for item in ds[split]:
            audio = item["audio"]
            samples = audio.get_all_samples() if hasattr(audio, "get_all_samples") else None
            rate = samples.sample_rate if samples is not None else audio["sampling_rate"]
            n = samples.data.shape[-1] if samples is not None else len(audio["array"])
            assert rate == 16_000 and n == pytest.approx(item["duration_s"] * 16_000, abs=2)
            assert item["emotion"] and item["sentiment"] in {"positive", "neutral", "negative"}


def test_outputs_are_ordinary_files_readable_by_others(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tree
    out = tmp_path / "out"
    build(config(root, out))
    umask = os.umask(0o022)
    os.umask(umask)
    for p in [out / "manifest.json", out / "README.md", out / "quarantine.parquet", *(out / "data").iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p


def test_a_foreign_output_folder_is_refused_and_user_files_survive(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tree
    foreign = tmp_path / "my-documents"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(CorpusError, match="not empty and holds no pallm dataset"):
        build(config(root, foreign))
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    out = tmp_path / "out"
    build(config(root, out))
    (out / "data" / "notes.txt").write_text("mine")
    (out / "data" / "extra.parquet").write_bytes(b"mine too")
    cfg = config(root, out)
    cfg.audio.silence_dbfs = -65.0  # a different build into the same folder
    build(cfg)
    assert (out / "data" / "notes.txt").read_text() == "mine" and (out / "data" / "extra.parquet").exists()


def test_rerun_after_a_kill_past_the_manifest_still_registers_the_card(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tree
    out, cards = tmp_path / "out", tmp_path / "cards"
    build(config(root, out, cards_index=cards))
    shutil.rmtree(cards)  # as if the build died right after writing its manifest
    (out / "data" / f"{TMP_PREFIX}half.parquet").write_bytes(b"half")
    build(config(root, out, cards_index=cards))
    version = read_manifest(out)["version"]
    assert [e["version"] for e in json.loads((cards / "index.json").read_text())] == [version]
    assert not list((out / "data").glob(f"{TMP_PREFIX}*"))


def test_version_names_the_data_not_the_code(
    tree: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = tree
    first = pipeline.plan(config(root, tmp_path / "out"))
    monkeypatch.setattr(pipeline, "code_version", lambda: "9.9.9")
    second = pipeline.plan(config(root, tmp_path / "out"))
    assert first.version == second.version and first.build_key != second.build_key


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            "dialog/EmoEvaluation/x.txt line 3: malformed summary line",
            "dialog/EmoEvaluation/y.txt line 17: malformed summary line",
        ),
        ("too long: 1200.0 s > max_duration_s 600 s", "too long: 701.5 s > max_duration_s 600 s"),
        (
            "emotion code 09 out of range in '03-01-09-01-01-01-10'",
            "emotion code 11 out of range in '03-01-11-01-01-01-02'",
        ),
    ],
)
def test_quarantine_reasons_group_by_kind(a: str, b: str) -> None:
    from pallm.cards import reason_kind

    assert reason_kind(a) == reason_kind(b) and reason_kind(a) != reason_kind("empty file (0 bytes)")


def test_a_new_clip_re_describes_its_speakers_chunks_without_re_measuring_others(
    ravdess16k: Path, tmp_path: Path
) -> None:
    root = tmp_path / "corpus"
    for actor in ("Actor_01", "Actor_02"):
        (root / actor).mkdir(parents=True)
        for src in sorted((ravdess16k / actor).glob("*.wav"))[:8]:
            shutil.copy(src, root / actor / src.name)
    out = tmp_path / "out"
    build(config(root, out))
    measured = {p.name: p.stat().st_mtime_ns for p in (out / ".pallm" / "measured").glob("*.parquet")}
    z_before = {r["id"]: r["f0_mean_z"] for r in shard_rows(out, ["id", "f0_mean_z"])}
    new = sorted((ravdess16k / "Actor_01").glob("*.wav"))[20]
    shutil.copy(new, root / "Actor_01" / new.name)
    _, second = build(config(root, out))
    after = {p.name: p.stat().st_mtime_ns for p in (out / ".pallm" / "measured").glob("*.parquet")}
    remeasured = [n for n in after if measured.get(n) != after[n]]
    assert len(remeasured) == 1  # only the chunk that holds the new clip ran audio and cues again
    assert all(not r.cached for r in second if "ravdess/actor01" in r.speakers)  # actor 1's statistics changed
    z_after = {r["id"]: r["f0_mean_z"] for r in shard_rows(out, ["id", "f0_mean_z"])}
    assert set(z_after) == {*z_before, f"ravdess/{new.stem}"}
    changed = {i for i in z_before if z_after[i] != z_before[i]}
    assert changed and all(i in {f"ravdess/{p.stem}" for p in (root / "Actor_01").glob("*.wav")} for i in changed)
