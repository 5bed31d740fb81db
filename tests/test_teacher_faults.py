"""The teacher against a loopback OpenAI-protocol server that injects faults on demand."""

from __future__ import annotations

import random
import sqlite3
from collections import deque
from pathlib import Path

import pytest
from openai_double import FAULTS, Double, serve
from reliability import Ledger
from teacher_helpers import build, quarantined, rows, small_tree

from pallm.lexical import text_of
from pallm.teacher.client import TeacherFatal

# Short timeouts and backoff keep the tests fast; the logic is the same at any scale.
FAST = {"backend": "openai", "model": "double", "backoff_s": 0.02, "backoff_max_s": 0.1, "timeout_s": 1.5,
        "retries": 3}  # fmt: skip
TASKS = 4


@pytest.fixture
def corpus(ravdess16k: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "corpus"
    return root, small_tree(ravdess16k, root, actors=(1, 2), per_actor=5)  # 5: enough for z-scores


@pytest.mark.reliability
def test_every_fault_once_then_answers(
    corpus: tuple[Path, list[str]], tmp_path: Path, fault_rng: random.Random, ledger: Ledger
) -> None:
    root, ids = corpus
    faults = fault_rng.sample(FAULTS, len(FAULTS))  # in a random order, one request each
    with serve(Double(hang_s=3.0, retry_after="0.2")) as d:
        d.faults.extend(faults)
        build(root, tmp_path / "out", {**FAST, "base_url": d.base_url})
    got = rows(tmp_path / "out")
    assert [r["id"] for r in got] == ids and not quarantined(tmp_path / "out")
    assert {s.fault for s in d.seen if s.fault} == set(FAULTS)
    ledger.record("teacher: every fault once", " ".join(faults), items=len(ids), delivered=len({r["id"] for r in got}),
                  duplicates=len(got) - len({r["id"] for r in got}))  # fmt: skip
    # Each question was answered exactly once (identical questions, such as the words-only reply to
    # a sentence several clips share, are asked once), and the rows hold the valid answers.
    answered = [s.key for s in d.answered()]
    assert len(answered) == len(set(answered)) == len({s.key for s in d.seen})
    for r in got:
        assert r["rationale"] and r["reply"] and r["words_only_reply"] and r["teacher_label"]
        assert r["teacher"]["model"] == "double" and r["teacher"]["prompt_tokens"] == TASKS * 100
        assert r["checks"]["well_formed"], r["checks"]


def test_retry_after_is_honoured(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = corpus
    with serve(Double(retry_after="1.5")) as d:
        d.faults.append("429")
        build(root, tmp_path / "out", {**FAST, "base_url": d.base_url, "concurrency": 1})
    limited = next(s for s in d.seen if s.fault == "429")
    retry = next(s for s in d.seen if s.key == limited.key and s.fault is None)
    assert retry.at - limited.at >= 1.5  # backoff alone would have retried within 0.1 s


@pytest.mark.reliability
def test_failing_items_are_quarantined_then_a_rerun_asks_only_what_is_missing(
    corpus: tuple[Path, list[str]], tmp_path: Path, ledger: Ledger
) -> None:
    root, ids = corpus
    out = tmp_path / "out"

    def dogs_judged_badly(task: str, body: dict) -> str | None:
        return "schema" if task == "judge" and "Dogs" in body["messages"][-1]["content"] else None

    with serve(Double(fault_for=dogs_judged_badly)) as d:
        build(root, out, {**FAST, "base_url": d.base_url})
    bad = quarantined(out)
    dogs = {r["id"] for r in bad}
    assert dogs and len(dogs) < len(ids)  # the build completed; only the items that kept failing are out
    assert all(q["stage"] == "teacher" and "judge: answer fails the schema" in q["reason"] for q in bad)
    kept = rows(out)
    assert len(kept) == len(ids) - len(dogs)
    ledger.record("teacher: answers keep failing", f"{FAST['retries'] + 1} schema failures per judgement of one "
                  "sentence", items=len(ids), delivered=len(kept), quarantined=len(bad))  # fmt: skip
    tries: dict[str, int] = {}
    for s in d.seen:
        if s.fault == "schema":
            tries[s.key] = tries.get(s.key, 0) + 1
    assert set(tries.values()) == {FAST["retries"] + 1}  # each failing question got its whole retry budget

    with serve() as d2:  # the endpoint recovered: the rerun asks only for the judgements that failed
        build(root, out, {**FAST, "base_url": d2.base_url})
    assert sorted(s.task for s in d2.seen) == ["judge"] * len(tries)
    recovered = rows(out)
    assert [r["id"] for r in recovered] == ids and not quarantined(out)
    ledger.record("teacher: rerun once it recovers", f"asked only the {len(tries)} failed judgements", items=len(ids),
                  delivered=len(recovered))  # fmt: skip

    with serve() as d3:  # a finished build asks nothing
        final = build(root, out, {**FAST, "base_url": d3.base_url})
    assert d3.seen == [] and final["unchanged"]


def test_a_new_prompt_version_re_asks_only_that_prompt(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, ids = corpus
    out = tmp_path / "out"
    prompts = tmp_path / "prompts"
    from pallm.teacher.prompts import PROMPTS_DIR

    prompts.mkdir()
    for f in PROMPTS_DIR.glob("*.yaml"):
        (prompts / f.name).write_text(f.read_text())
    with serve() as d:
        build(root, out, {**FAST, "base_url": d.base_url, "prompts": str(prompts)})
    asked = len(d.seen)
    assert len(ids) * 3 < asked <= TASKS * len(ids)
    reply = prompts / "reply.yaml"
    reply.write_text(reply.read_text().replace('version: "1"', 'version: "2"').replace("one or two", "two"))
    with serve() as d2:
        build(root, out, {**FAST, "base_url": d2.base_url, "prompts": str(prompts)})
    assert sorted(s.task for s in d2.seen) == ["reply"] * len(ids)
    assert all("reply@2" in r["teacher"]["prompt_version"] for r in rows(out))
    words = prompts / "words_only.yaml"
    words.write_text(words.read_text().replace('version: "2"', 'version: "3"').replace("one or two", "two"))
    with serve() as d3:
        build(root, out, {**FAST, "base_url": d3.base_url, "prompts": str(prompts)})
    distinct = len({text_of(r) for r in rows(out)})  # the words-only prompt sees the words alone
    assert sorted(s.task for s in d3.seen) == ["words_only"] * distinct


REPAIR_NOTE = "A first answer to this failed a check"


def test_a_failing_answer_is_asked_again_once_and_both_answers_are_cached(
    corpus: tuple[Path, list[str]], tmp_path: Path
) -> None:  # fmt: skip
    root, ids = corpus

    def echo_first(task: str, body: dict) -> str | None:
        return "echo" if task == "understand" and REPAIR_NOTE not in body["messages"][-1]["content"] else None

    with serve(Double(fault_for=echo_first)) as d:
        build(root, tmp_path / "out", {**FAST, "base_url": d.base_url})
    understand = [s for s in d.seen if s.task == "understand"]
    assert len(understand) == 2 * len(ids) and sum(s.fault == "echo" for s in understand) == len(ids)
    got = rows(tmp_path / "out")
    for r in got:
        assert r["rationale"] != text_of(r) and ", which fits" in r["rationale"]
        assert r["checks"]["repaired"] == ["understand"] and r["checks"]["well_formed"]
        assert r["checks"]["first_well_formed"] is False
        assert r["teacher"]["prompt_tokens"] == (TASKS + 1) * 100  # both answers are paid for
    card = (tmp_path / "out" / "README.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith("| ravdess | understand@"))
    assert line.split(" | ")[2:5] == [str(len(ids)), str(len(ids)), "0.0%"], line  # answered, repaired, before
    with serve() as d2:
        build(root, tmp_path / "out", {**FAST, "base_url": d2.base_url})
    assert d2.seen == [], "a rerun asked again what the cache holds (both answers)"


def test_an_answer_that_fails_its_repair_too_is_kept_and_flagged(
    corpus: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, ids = corpus
    with serve(Double(fault_for=lambda task, body: "echo" if task == "understand" else None)) as d:
        build(root, tmp_path / "out", {**FAST, "base_url": d.base_url})
    assert sum(s.task == "understand" for s in d.seen) == 2 * len(ids), "the repair is asked once, not again"
    for r in rows(tmp_path / "out"):
        assert r["rationale"] == text_of(r) and not r["checks"]["well_formed"]
        assert r["checks"]["repaired"] == [] and "teacher_malformed" in r["flags"]
        assert "the rationale only repeats what was said" in r["checks"]["problems"]


def test_a_raw_control_character_in_an_answer_is_read_not_retried(
    corpus: tuple[Path, list[str]], tmp_path: Path
) -> None:  # fmt: skip
    root, ids = corpus
    with serve(Double(fault_for=lambda task, body: "control_char" if task == "understand" else None)) as d:
        build(root, tmp_path / "out", {**FAST, "base_url": d.base_url})
    got = rows(tmp_path / "out")
    assert [r["id"] for r in got] == ids and not quarantined(tmp_path / "out")
    assert sum(s.task == "understand" for s in d.seen) == len(ids), "an answer with a raw newline was asked again"
    assert all(", which" in r["rationale"] and not any(ord(c) < 32 for c in r["rationale"]) for r in got)


def test_server_without_json_schema_falls_back_to_json_mode(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, ids = corpus
    with serve(Double(refuse_json_schema=True)) as d:
        build(root, tmp_path / "out", {**FAST, "base_url": d.base_url, "concurrency": 1})
    assert [s.format for s in d.seen[:2]] == ["json_schema", "json_object"]
    assert {s.format for s in d.seen[2:]} == {"json_object"}  # refused once, not for every request
    assert len(rows(tmp_path / "out")) == len(ids)


def test_a_refused_key_stops_the_build(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = corpus
    with serve(Double(fault_for=lambda task, body: "401")) as d, pytest.raises(TeacherFatal, match="HTTP 401"):
        build(root, tmp_path / "out", {**FAST, "base_url": d.base_url})
    assert len(d.seen) <= 4  # the requests already in flight (concurrency 4), and no retries


def test_answers_survive_in_the_cache(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, ids = corpus
    out = tmp_path / "out"
    with serve() as d:
        build(root, out, {**FAST, "base_url": d.base_url})
    with sqlite3.connect(out / ".pallm" / "teacher.sqlite") as db:
        tasks = dict(db.execute("SELECT task, COUNT(*) FROM answers GROUP BY task").fetchall())
    answered: dict[str, int] = {}
    for s in d.answered():
        answered[s.task] = answered.get(s.task, 0) + 1
    assert tasks == answered and tasks["understand"] == len(ids)  # every answer received, each once
    assert tasks["words_only"] == 2  # the words-only reply depends on the words: two RAVDESS sentences


def test_batch_api_answers_then_the_live_path_takes_the_rest(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, ids = corpus

    def one_bad_batch_line(task: str, body: dict) -> str | None:
        return "schema" if task == "judge" and "Dogs" in body["messages"][-1]["content"] else None

    with serve(Double(fault_for=one_bad_batch_line)) as d:
        final = build(root, tmp_path / "out", {**FAST, "base_url": d.base_url, "batch_api": True,
                                               "batch_poll_s": 0.05, "price_input_per_mtok": 1.0,
                                               "price_output_per_mtok": 2.0})  # fmt: skip
    batched = [s for s in d.seen if s.format == "batch"]
    live = [s for s in d.seen if s.format != "batch"]
    assert batched and d.batches and all(j["status"] == "completed" for j in d.batches.values())
    # the unusable batch answers (every Dogs judgement) were asked live, and failed there too
    assert {s.task for s in live} == {"judge"} and all(s.fault == "schema" for s in live)
    assert len(rows(tmp_path / "out")) == len(ids) - len(quarantined(tmp_path / "out")) > 0
    assert "(Batch API: half price)" in final["card"]


def test_the_api_key_is_sent_but_never_written(
    corpus: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root, _ = corpus
    secret = "sk-test-5ecret-never-to-be-written"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    caplog.set_level("DEBUG")
    with serve(Double(faults=deque(["429", "schema"]), retry_after="0")) as d:
        build(root, tmp_path / "out", {**FAST, "base_url": d.base_url})
    assert d.authorization == {f"Bearer {secret}"}
    assert secret not in caplog.text
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
