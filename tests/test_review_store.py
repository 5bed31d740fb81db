"""The review store on SQLite and PostgreSQL: migrations, import, queues, concurrency, agreement, export."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from review_helpers import add_users
from sqlalchemy import func, select

from pallm.dataset import read_manifest
from pallm.review import db, export, importer, workflow
from pallm.review.agreement import agreement
from pallm.review.models import Adjudication, Assignment, Base, Decision, Item, ItemAudio, User
from pallm.review.workflow import DecisionInput, Refused, Stale


def _user(s, name: str) -> User:
    return s.scalar(select(User).where(User.name == name))


def _dataset_rows(ds: Path) -> list[dict]:
    m = read_manifest(ds)
    return [r for sh in m["shards"] for r in pq.read_table(ds / sh["path"], columns=["id", "flags"]).to_pylist()]


def test_migrations_create_exactly_the_models(review_db: str) -> None:
    engine = db.make_engine(review_db)
    try:
        db.migrate(engine)
        db.migrate(engine)  # a second run is a no-op
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
    finally:
        engine.dispose()


def test_import_takes_flagged_items_and_a_sample_once(reviewable: Path, review_db: str) -> None:
    rows = _dataset_rows(reviewable)
    flagged = {r["id"] for r in rows if set(r["flags"]) & set(importer.REVIEW_FLAGS)}
    assert flagged, "the rules teacher disagrees with some RAVDESS labels, so some rows must be flagged"
    with db.open_db(review_db) as sessions, sessions() as s:
        first = importer.import_dataset(s, reviewable, sample=3, overlap=2)
        again = importer.import_dataset(s, reviewable, sample=3, overlap=2)
        items = s.scalars(select(Item)).all()
        audio = s.scalars(select(ItemAudio)).all()
    assert (first.flagged, first.sampled, first.added) == (len(flagged), min(3, len(rows) - len(flagged)), len(items))
    assert (again.added, again.already) == (0, len(items)), "a rerun must not import anything twice"
    assert {i.row_id for i in items if i.why != ["sample"]} == flagged
    assert all(i.priority == 0 for i in items if i.row_id in flagged)
    assert all(i.overlap == 2 for i in items)
    assert len(audio) == len(items) and all(len(a.peaks) == importer.PEAKS and max(a.peaks) > 0 for a in audio)
    assert all(a.wav[:4] == b"RIFF" for a in audio)
    assert any(i.words and {"word", "start", "end"} <= set(i.words[0]) for i in items)


def test_sample_is_stratified_by_corpus_and_emotion() -> None:
    sizes = {("a", "x"): 60, ("a", "y"): 30, ("b", "z"): 10}
    rows = [
        {"id": f"{c}/{e}{k}", "corpus": c, "emotion": e, "flags": []} for (c, e), n in sizes.items() for k in range(n)
    ]
    rows.append({"id": "b/flagged", "corpus": "b", "emotion": "z", "flags": ["teacher_ungrounded"]})
    chosen = importer.select_items(rows, sample=10, seed=3)
    strata = Counter(k.split("/")[0] + k.split("/")[1][0] for k, why in chosen.items() if why == ["sample"])
    assert strata == {"ax": 6, "ay": 3, "bz": 1}
    assert chosen["b/flagged"] == ["teacher_ungrounded"]
    assert importer.select_items(rows, sample=10, seed=3) == chosen, "the sample is reproducible"
    assert len(importer.select_items(rows, sample=10_000)) == len(rows)


def _import(url: str, ds: Path, overlap: int) -> int:
    with db.open_db(url) as sessions, sessions() as s:
        return importer.import_dataset(s, ds, sample=100, overlap=overlap).added


def test_queues_honour_the_overlap(reviewable: Path, review_db: str) -> None:
    n = _import(review_db, reviewable, overlap=2)
    add_users(review_db, ("ann1", "ann2", "ann3"))
    with db.open_db(review_db) as sessions, sessions() as s:
        users = [_user(s, n) for n in ("ann1", "ann2", "ann3")]
        first = workflow.next_item(s, users[0])
        assert first.priority == 0, "flagged items come first"
        assert workflow.next_item(s, users[0]).id == first.id, "an undecided item stays with its annotator"
        done = Counter()
        while True:
            progressed = False
            for u in users:
                item = workflow.next_item(s, u)
                if item is not None:
                    workflow.save_decision(s, u, item, DecisionInput("accept"))
                    done[u.name] += 1
                    progressed = True
            if not progressed:
                break
        per_item = Counter(d.item_id for d in s.scalars(select(Decision)))
        pairs = {(d.item_id, d.user_id) for d in s.scalars(select(Decision))}
    assert set(per_item.values()) == {2} and len(per_item) == n, "every item gets exactly two annotators"
    assert len(pairs) == 2 * n, "no annotator sees an item twice"
    assert min(done.values()) > 0


def test_concurrent_claims_never_exceed_the_overlap(reviewable: Path, review_db: str) -> None:
    n = _import(review_db, reviewable, overlap=2)
    names = ("ann1", "ann2", "ann3", "rev1", "rev2", "admin")
    add_users(review_db, names)
    engine = db.make_engine(review_db)
    sessions = db.sessions(engine)
    barrier = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def labeler(name: str) -> None:
        try:
            with sessions() as s:
                user = _user(s, name)
                barrier.wait()
                while (item := workflow.next_item(s, user)) is not None:
                    # An item handed out is one this user holds a claim on (reviewers could open any item).
                    held = select(Assignment).where(Assignment.item_id == item.id, Assignment.user_id == user.id)
                    assert s.scalar(held) is not None, f"{name} got item {item.id} without claiming it"
                    workflow.save_decision(s, user, item, DecisionInput("accept"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=labeler, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        with sessions() as s:
            claims = Counter(a.item_id for a in s.scalars(select(Assignment)))
            decided = Counter(d.item_id for d in s.scalars(select(Decision)))
    finally:
        engine.dispose()
    assert not errors, errors
    assert max(claims.values()) <= 2 and max(decided.values()) <= 2
    assert sum(decided.values()) == 2 * n, "together they finish every item twice"


def test_outdated_saves_are_refused_not_overwritten(reviewable: Path, review_db: str) -> None:
    _import(review_db, reviewable, overlap=2)
    add_users(review_db, ("ann1", "ann2", "rev1", "rev2"))
    with db.open_db(review_db) as sessions, sessions() as s:
        ann1, ann2, rev1, rev2 = (_user(s, n) for n in ("ann1", "ann2", "rev1", "rev2"))
        item = workflow.next_item(s, ann1)
        saved = workflow.save_decision(s, ann1, item, DecisionInput("accept"))
        assert saved.version == 1
        with pytest.raises(Stale):  # a second tab that opened the item before the first save
            workflow.save_decision(s, ann1, item, DecisionInput("reject", reasons=["wrong_label"], version=0))
        assert (
            workflow.save_decision(s, ann1, item, DecisionInput("reject", reasons=["wrong_label"], version=1)).version
            == 2
        )
        assert workflow.next_item(s, ann2).id == item.id, "the item ann1 started is ann2's next"
        workflow.save_decision(s, ann2, item, DecisionInput("accept"))
        assert [c.id for c in workflow.conflicts(s)] == [item.id]
        workflow.adjudicate(s, rev1, item, DecisionInput("accept", version=0))
        with pytest.raises(Stale, match="rev1"):
            workflow.adjudicate(s, rev2, item, DecisionInput("reject", reasons=["audio_problem"], version=0))
        adj = s.scalar(select(Adjudication).where(Adjudication.item_id == item.id))
        assert (adj.decision, adj.user_id) == ("accept", rev1.id)
        assert workflow.conflicts(s) == []
        with pytest.raises(Refused, match="only reviewers"):
            workflow.adjudicate(s, ann1, item, DecisionInput("accept", version=1))


def test_decisions_are_validated(reviewable: Path, review_db: str) -> None:
    _import(review_db, reviewable, overlap=1)
    add_users(review_db, ("ann1",))
    with db.open_db(review_db) as sessions, sessions() as s:
        ann1 = _user(s, "ann1")
        item = workflow.next_item(s, ann1)
        for bad, message in [
            (DecisionInput("reject"), "at least one reason"),
            (DecisionInput("reject", reasons=["because"]), "unknown reason"),
            (DecisionInput("accept", reasons=["wrong_label"]), "rejections only"),
            (DecisionInput("edit", edits={"rationale": item.rationale}), "nothing was edited"),
            (DecisionInput("maybe"), "decision must be"),
        ]:
            with pytest.raises(Refused, match=message):
                workflow.save_decision(s, ann1, item, bad)
        assert s.scalar(select(func.count()).select_from(Decision)) == 0
        d = workflow.save_decision(s, ann1, item, DecisionInput("edit", edits={"reply": "  Sorry to hear that.  "}))
        assert (d.reply, d.rationale) == ("Sorry to hear that.", None), "only the changed text is stored"


def test_agreement_matches_hand_computed_values() -> None:
    # ann1: accept accept reject reject; ann2: accept reject reject reject.
    # Cohen's kappa: po = 3/4, pe = 1/2 -> 0.5. Krippendorff's alpha (nominal): Do = 2/8, De = 30/56 -> 8/15.
    a = ["accept", "accept", "reject", "reject"]
    b = ["accept", "reject", "reject", "reject"]
    rows = [{"item_id": i, "annotator": who, "decision": d, "reasons": ["wrong_label"] if d == "reject" else []}
            for who, ds in (("ann1", a), ("ann2", b)) for i, d in enumerate(ds)]  # fmt: skip
    rows.append({"item_id": 9, "annotator": "ann1", "decision": "edit", "reasons": []})  # one answer: not paired
    found = {q.question: q for q in agreement(rows)}
    usable = found["usable"]
    assert usable.items == 4
    assert usable.alpha == pytest.approx(8 / 15)
    assert usable.kappa[("ann1", "ann2")] == pytest.approx(0.5)
    assert found["reason: audio_problem"].alpha is None, "one answer only: undefined, not perfect"


def _decide_three(url: str, ds: Path) -> dict[str, str]:
    """ann1 accepts one item, edits one and rejects one; returns decision -> row id."""
    add_users(url, ("ann1",))
    chosen = {}
    with db.open_db(url) as sessions, sessions() as s:
        ann1 = _user(s, "ann1")
        for d in ("accept", "edit", "reject"):
            item = workflow.next_item(s, ann1)
            given = {
                "accept": DecisionInput("accept"),
                "edit": DecisionInput("edit", edits={"rationale": "Her pitch is low and her voice quiet."}),
                "reject": DecisionInput("reject", reasons=["invented_cue", "bad_reply"], comment="no"),
            }[d]
            workflow.save_decision(s, ann1, item, given)
            chosen[d] = item.row_id
    return chosen


def test_export_writes_reviews_and_the_card_section(reviewable: Path, review_db: str, tmp_path: Path) -> None:
    ds = tmp_path / "dataset"
    shutil.copytree(reviewable, ds)
    _import(review_db, ds, overlap=1)
    chosen = _decide_three(review_db, ds)
    with db.open_db(review_db) as sessions, sessions() as s:
        summary = export.export(s, ds)
        export.export(s, ds)  # a second export replaces, never appends
    reviews = pq.read_table(ds / export.REVIEWS_FILE)
    assert reviews.schema.names == export.REVIEWS_SCHEMA.names
    got = {r["item_id"]: r for r in reviews.to_pylist()}
    assert {got[chosen[d]]["decision"] for d in chosen} == set(chosen)
    assert got[chosen["edit"]]["edited_rationale"] == "Her pitch is low and her voice quiet."
    assert got[chosen["reject"]]["reasons"] == ["bad_reply", "invented_cue"]
    assert all(r["final"] and r["annotator"] == "ann1" and r["guideline_version"] == "1" for r in got.values())
    assert summary["final_decisions"] == {"accept": 1, "edit": 1, "reject": 1}
    card = (ds / "README.md").read_text()
    assert card.count("## Annotation") == 1 and card.count(export.START) == 1
    assert "| final reject | 1 (0.333) |" in card and "invented cue 1" in card
    assert card.index("## Annotation") < card.index("## Distribution and licences")
    assert export.dataset_section(ds) in card, "a rebuilt card renders the same section from reviews.parquet"

    shards = read_manifest(ds)["shards"]
    table = pa.concat_tables([pq.read_table(ds / sh["path"], columns=["id", "rationale"]) for sh in shards])
    view = export.apply_reviews(table, reviews).to_pylist()
    by_id = {r["id"]: r for r in view}
    assert chosen["reject"] not in by_id and len(view) == table.num_rows - 1
    assert by_id[chosen["edit"]]["rationale"] == "Her pitch is low and her voice quiet."
    assert (by_id[chosen["edit"]]["review"], by_id[chosen["accept"]]["review"]) == ("edit", "accept")
    assert Counter(r["review"] for r in view)["none"] == table.num_rows - 3
