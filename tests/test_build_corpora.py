"""Every adapter through the whole build: IEMOCAP, Expresso, a manifest and the synthetic corpus together."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml
from build_helpers import build, shard_rows
from corpus_fixtures import make_expresso_tree, make_iemocap_tree, voiced, write_wav

from pallm.config import BuildConfig, CorpusSpec, ShardConfig


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("corpora")
    iemocap = make_iemocap_tree(tmp / "IEMOCAP")
    expresso = make_expresso_tree(tmp / "expresso")
    clips = tmp / "my corpus"
    for i in range(3):
        write_wav(clips / f"take {i}.wav", 22_050, voiced(0.8, 22_050, 140 + 40 * i, seed=i))
    (clips / "list.csv").write_text(
        "path,label,speaker,text\n"
        + "".join(f"take {i}.wav,{label},spk{i % 2},hello there\n" for i, label in enumerate(("happy", "sad", "angry")))
        + "missing.wav,happy,spk0,\n"
    )
    out = tmp / "out"
    cfg = BuildConfig(
        name="all",
        asr="none",
        teacher="none",
        corpora=[
            CorpusSpec(name="iemocap", path=iemocap["root"]),
            CorpusSpec(name="expresso", path=expresso["root"]),
            CorpusSpec(name="manifest", path=clips / "list.csv"),
            CorpusSpec(name="synthetic", path=tmp / "synthetic"),
        ],
        out=out,
        shards=ShardConfig(chunk_rows=8),
        workers=2,
    )
    build(cfg)
    return {"out": out, "iemocap": iemocap, "expresso": expresso}


def test_every_expected_row_is_built(built: dict) -> None:
    rows = {r["id"]: r for r in shard_rows(built["out"])}
    expected = {**built["iemocap"]["rows"], **built["expresso"]["rows"]}
    # the singing file is opt-in; every other expected row is built, with its labels
    for id_, want in expected.items():
        assert id_ in rows, id_
        for k, v in want.items():
            assert rows[id_][k] == pytest.approx(v) if isinstance(v, float) else rows[id_][k] == v, (id_, k)
    assert {i for i in rows if i.startswith("manifest/")} == {"manifest/take 0", "manifest/take 1", "manifest/take 2"}
    assert sum(i.startswith("synthetic/") for i in rows) == 144


def test_expresso_dialogues_keep_one_actor_per_channel(built: dict) -> None:
    rows = [r for r in shard_rows(built["out"]) if r["id"].startswith("expresso/") and r["channel"] is not None]
    assert rows and all(r["source_channels"] == 2 for r in rows)
    by_file: dict[str, dict[int, np.ndarray]] = {}
    for r in rows:
        audio, rate = sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="float32")
        assert rate == 16_000 and audio.ndim == 1
        by_file.setdefault(r["id"].rsplit("/", 1)[0], {})[r["channel"]] = audio
    for channels in by_file.values():
        assert set(channels) == {0, 1}
        a, b = channels[0], channels[1]
        # not downmixed: each row holds its own actor, so the two channels differ
        assert np.corrcoef(a[: len(b)], b[: len(a)])[0, 1] < 0.9


def test_quarantine_holds_every_bad_item(built: dict) -> None:
    q = pq.read_table(built["out"] / "quarantine.parquet").to_pylist()
    for expect in (built["iemocap"], built["expresso"]):
        for id_, (path, words) in expect["quarantined_ids"].items():
            hit = [x for x in q if x["id"] == id_]
            assert hit and hit[0]["path"] == path and all(w in hit[0]["reason"] for w in words), (id_, hit)
        for path, words in expect["quarantined_paths"].items():
            hit = [x for x in q if x["path"] == path and all(w in x["reason"] for w in words)]
            assert hit, (path, words)
    assert [x["reason"] for x in q if x["corpus"] == "manifest"] and any(
        "line 5" in x["reason"] for x in q if x["corpus"] == "manifest"
    )


def test_card_names_every_source_and_marks_synthetic(built: dict) -> None:
    card = (built["out"] / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["license"] == "other" and "synthetic" in header["tags"]
    assert "**Contains synthetic speech.**" in card
    for corpus in ("iemocap", "expresso", "manifest", "synthetic"):
        assert f"| {corpus} |" in card
    assert "CC BY-NC 4.0" in card and "| iemocap | exc | happy | positive |" in card


def test_mixed_dataset_loads_with_datasets(built: dict) -> None:
    datasets = pytest.importorskip("datasets", reason="the hf extra is not installed")
    ds = datasets.load_dataset(str(built["out"]))
    total = sum(len(ds[s]) for s in ds)
    assert total == len(shard_rows(built["out"], ["id"]))
    train = ds["train"]
    assert isinstance(train.features["emphasis"], datasets.List)
    emphasised = [e for e in train["emphasis"] if e]
    assert emphasised and all({"index", "word"} == set(w) for e in emphasised for w in e)
    assert train.features["valence"].dtype == "float32"


def test_lexical_probe_runs_per_corpus(built: dict) -> None:
    card = (built["out"] / "README.md").read_text()
    table = card.split("### Lexical shortcuts")[1].split("###")[0]
    for corpus in ("expresso", "iemocap", "synthetic"):  # the corpora with text (references; no ASR here)
        assert f"| {corpus} |" in table
    rows = [r for r in shard_rows(built["out"]) if r["id"].startswith("synthetic/")]
    # the same four sentences in every emotion: the words say nothing of the emotion
    accuracy = sum(r["words_only_label"] == r["emotion"] for r in rows) / len(rows)
    assert accuracy < 1 / 6 + 0.1 and not any("words_give_label" in r["flags"] for r in rows)
