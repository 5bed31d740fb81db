"""The teacher's parts: grounding rule, prompts, answer schemas, checks, rules teacher, lexical probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from teacher_helpers import build, rows, small_tree

from pallm import lexical
from pallm.config import BuildConfig, TeacherConfig
from pallm.cues import vocabulary
from pallm.cues.grounding import check_claims, claims_in_text
from pallm.labels import corpus_emotions
from pallm.teacher import rules
from pallm.teacher.answers import MalformedAnswer, json_schema, parse
from pallm.teacher.checks import check_answers, form_problems
from pallm.teacher.prompts import TASKS, load_template, templates

MEASURED = ["pitch: high", "pitch range: normal", "loudness: loud", "rate: normal", "emphasis on 'door'"]


def test_grounding_rule() -> None:
    g = check_claims(["Pitch : HIGH", "loudness: loud", "emphasis on \u2018door\u2019"], MEASURED)
    assert g.grounded and g.supported == ("pitch: high", "loudness: loud", "emphasis on 'door'")
    g = check_claims(["pitch: low", "pauses: long", "emphasis on 'kids'", "sounds happy"], MEASURED)
    assert not g.grounded and g.contradicted == ("pitch: low",)
    assert g.unsupported == ("pauses: long", "emphasis on 'kids'", "sounds happy") and g.rate == 0.0
    assert not check_claims([], MEASURED).grounded  # a rationale that cites nothing is not grounded


def test_plain_word_claims_are_found_unless_negated() -> None:
    assert claims_in_text("Her voice is loud and she speaks quickly, with long pauses.") == [
        "loudness: loud", "rate: fast", "pauses: long"]  # fmt: skip
    assert claims_in_text("The voice is not loud, and she never speaks fast.") == []
    assert claims_in_text("A high-pitched, monotone delivery.") == ["pitch: high", "pitch range: narrow"]


def test_every_vocabulary_phrase_has_a_plain_word_form() -> None:
    from pallm.cues.grounding import TEXT_CLAIMS

    assert set(TEXT_CLAIMS) <= set(vocabulary.phrases())
    scales = {p for p in vocabulary.phrases() if not p.endswith((": mid", ": normal"))}
    assert scales == set(TEXT_CLAIMS)  # the usual levels are never claimed in plain words


def test_templates_are_versioned_files_with_every_task(tmp_path: Path) -> None:
    found = templates()
    assert list(found) == list(TASKS) and all(t.version and t.max_tokens > 0 for t in found.values())
    msgs = found["judge"].messages(transcript="Kids are talking by the door", cue_words=MEASURED,
                                   emotions=corpus_emotions("ravdess"))  # fmt: skip
    assert msgs[0]["role"] == "system" and "Kids are talking by the door" in msgs[1]["content"]
    assert "surprised" in msgs[1]["content"] and "pitch: high; pitch range: normal" in msgs[1]["content"]
    assert "angry" not in msgs[1]["content"].split("Said:")[1]  # no gold label in the blind judgement
    (tmp_path / "bad.yaml").write_text("task: judge\nversion: '1'\n")
    with pytest.raises(ValueError, match="lacks max_tokens, system, user"):
        load_template(tmp_path / "bad.yaml")


def test_each_prompt_shows_the_worked_example_closest_to_its_clip() -> None:
    import json

    from pallm.cues.grounding import check_claims

    understand = templates()["understand"]
    # Every example is grounded in its own cues: a model that copies its wording states what was measured.
    for ex in understand.examples:
        answer = json.loads(ex["answer"])
        claims = [*answer["cited_cues"], *claims_in_text(answer["rationale"])]
        assert check_claims(claims, ex["cue_words"]).grounded, ex
        # ... and says each that stands out in words the grounding check reads (the usual levels claim nothing)
        stands_out = [c for c in ex["cue_words"] if c.split(": ")[1] not in ("mid", "normal")]
        assert sorted(claims_in_text(answer["rationale"])) == sorted(stands_out), ex
    # The example shown is the one whose measured pitch and loudness are the clip's.
    for pitch, loudness in (("low", "quiet"), ("high", "loud"), ("mid", "normal")):
        cues = [f"pitch: {pitch}", "pitch range: wide", f"loudness: {loudness}", "rate: fast"]
        shown = understand.example_for({"transcript": "Kids are talking by the door", "cue_words": cues})
        assert shown is not None and set(shown["cue_words"]) <= set(cues), (cues, shown)
        system = understand.messages(transcript="x", cue_words=cues, emotion="sad", sentiment="negative")[0]
        assert shown["said"] in system["content"] and "{{" not in system["content"]


def test_answer_schemas_and_validation() -> None:
    emotions = corpus_emotions("ravdess")
    schema = json_schema("understand", emotions, gold=("angry", "negative"), cues=MEASURED)
    assert schema["properties"]["emotion"]["enum"] == ["angry"] and schema["additionalProperties"] is False
    cited = schema["properties"]["cited_cues"]
    assert cited["items"]["enum"] == MEASURED and cited["minItems"] == 1  # the clip's own cues, nothing else
    assert json_schema("understand", emotions, cues=[])["properties"]["cited_cues"]["maxItems"] == 0
    # A raw control character inside a string (JSON forbids it; some servers send it) is read, as a space.
    raw = '{"rationale": "The pitch is high.\n\tLoud too.", "cited_cues": ["pitch: high"], "emotion": "angry", ' \
          '"sentiment": "negative"}'  # fmt: skip
    with pytest.raises(ValueError, match="control character"):
        json.loads(raw)
    assert parse("understand", json.loads(raw, strict=False), emotions)["rationale"] == "The pitch is high. Loud too."
    assert json_schema("judge", emotions)["properties"]["emotion"]["enum"] == list(emotions)
    assert parse("judge", {"emotion": "Angry", "sentiment": "negative"}, emotions)["emotion"] == "angry"
    with pytest.raises(MalformedAnswer, match="emotion 'bored' is not one of"):
        parse("judge", {"emotion": "bored", "sentiment": "negative"}, emotions)
    with pytest.raises(MalformedAnswer, match="reply: Field required"):
        parse("reply", {"answer": "hi"}, emotions)


def test_checks_flag_what_fails() -> None:
    row = {"emotion": "angry", "cue_words": MEASURED, "transcript": "Kids are talking by the door"}
    good = {
        "understand": {"rationale": "The pitch is high and the voice is loud: strong arousal, so anger.",
                       "cited_cues": ["pitch: high", "loudness: loud"], "emotion": "angry"},
        "judge": {"emotion": "angry"},
        "reply": {"reply": "I can hear you're upset. What happened?"},
        "words_only": {"reply": "Are they? Shall I close the door?"},
    }  # fmt: skip
    assert check_answers(row, good) == {"grounded": True, "agrees": True, "well_formed": True,
                                        "unsupported_cues": [], "problems": []}  # fmt: skip
    bad = {**good, "understand": {**good["understand"], "rationale": "She speaks slowly, so anger. <reason>"},
           "judge": {"emotion": "happy"}, "words_only": {"reply": "Kids are talking by the door."}}  # fmt: skip
    c = check_answers(row, bad, examples=["... Shall I close the door? ..."])
    assert not c["grounded"] and c["unsupported_cues"] == ["rate: slow"]  # claimed in words, measured normal
    assert not c["agrees"] and not c["well_formed"]
    assert any("placeholder" in p for p in c["problems"]) and any("repeats" in p for p in c["problems"])
    assert not check_answers(row, {**good, "reply": {"reply": "Shall I close the door?"}}, ["Shall I close the "
                             "door?"])["well_formed"]  # fmt: skip


def test_an_answer_that_reads_back_its_repair_request_fails() -> None:
    from pallm.teacher.stage import repair_note

    row = {"emotion": "angry", "cue_words": MEASURED, "transcript": "Kids are talking by the door"}
    note = repair_note(["the words-only reply only repeats what was said"])
    # What SmolLM2 answered when the note sat in the user's turn: a paraphrase, not a copy of the whole note.
    echo = {"reply": "A first answer to this failed a check: the words only repeat what was said."}
    assert form_problems(row, "words_only", echo) == []  # without the note nothing is wrong with its form
    found = form_problems(row, "words_only", echo, note=note)
    assert found == ["the words-only reply repeats the request to fix it"]
    fine = {"reply": "Are they? Shall I close the door?"}
    assert form_problems(row, "words_only", fine, note=note) == []


REPEATS = ["Kids are talking by the door.", "Oh, kids are talking by the door.", "Kids are talking by the door?",
           "Kids are talking by the door. Answer: yes."]  # fmt: skip
ANSWERS = ["Why are the kids talking by the door?", "Kids are talking? Shall I go and see?",
           "Kids are talking by the door. They must be waiting for the bus."]  # fmt: skip


@pytest.mark.parametrize("reply", REPEATS)
def test_a_reply_made_of_what_was_said_repeats_it(reply: str) -> None:
    """SmolLM2's words-only replies to a RAVDESS sentence: the sentence, dressed up or not, is no reply."""
    row = {"emotion": "calm", "transcript": "Kids are talking by the door"}
    assert form_problems(row, "words_only", {"reply": reply}) == ["the words-only reply only repeats what was said"]


@pytest.mark.parametrize("reply", ANSWERS)
def test_a_reply_that_answers_the_words_does_not_repeat_them(reply: str) -> None:
    row = {"emotion": "calm", "transcript": "Kids are talking by the door"}
    assert form_problems(row, "words_only", {"reply": reply}) == []


def test_rules_teacher_is_grounded_by_construction() -> None:
    u = rules.understand("Kids are talking by the door", MEASURED, "angry", "negative")
    assert u["cited_cues"] == ["pitch: high", "loudness: loud", "emphasis on 'door'"]
    assert check_claims([*u["cited_cues"], *claims_in_text(u["rationale"])], MEASURED).grounded
    assert rules.judge(MEASURED, corpus_emotions("ravdess"))["emotion"] == "angry"
    assert rules.judge(["pitch: low", "loudness: quiet", "rate: slow"], corpus_emotions("ravdess")) == {
        "emotion": "sad", "sentiment": "negative"}  # fmt: skip
    assert rules.judge(MEASURED, ("neutral", "happy"))["emotion"] == "happy"  # only labels the corpus has


def test_teacher_config_from_flags() -> None:
    cfg = BuildConfig.load(None, teacher="openai", teacher_base_url="http://127.0.0.1:9/v1", teacher_model="m")
    assert cfg.teacher == TeacherConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(ValueError, match="needs a model"):
        BuildConfig.load(None, teacher="openai")
    a = BuildConfig.load(None, teacher={"backend": "rules", "concurrency": 1, "cache": "/x"})
    b = BuildConfig.load(None, teacher="rules")
    assert a.fingerprint() == b.fingerprint()  # how answers are fetched does not change the data
    assert a.fingerprint() != BuildConfig.load(None, teacher={"backend": "rules", "temperature": 0}).fingerprint()


def test_rules_build_on_real_clips(ravdess16k: Path, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    ids = small_tree(ravdess16k, root, actors=(1, 2, 3), per_actor=6)
    final = build(root, tmp_path / "out", "rules")
    got = rows(tmp_path / "out")
    assert [r["id"] for r in got] == ids
    for r in got:
        assert r["teacher"] == {"backend": "rules", "model": "rules@1", "prompt_version": "rules@1",
                                "prompt_tokens": 0, "completion_tokens": 0}  # fmt: skip
        assert r["checks"]["grounded"], (r["cue_words"], r["rationale"])
        assert r["checks"]["agrees"] == (r["teacher_label"] == r["emotion"])
        assert ("teacher_disagrees" in r["flags"]) != r["checks"]["agrees"]
        assert r["words_only_p"] is not None and r["words_only_label"] in corpus_emotions("ravdess")
    card = final["card"]
    assert "templates written by rules from the measured cues, not by a language model" in card
    assert "### Lexical shortcuts" in card and "| ravdess | 18 |" in card


def test_lexical_probe_is_at_chance_on_ravdess(ravdess16k: Path) -> None:
    """Two sentences said in all eight emotions: the words cannot know the emotion."""
    from pallm.corpora.ravdess import parse_name

    found = []
    for p in sorted(ravdess16k.rglob("*.wav")):
        meta = parse_name(p.stem)
        text = ("Kids are talking by the door", "Dogs are sitting by the door")[meta["statement"] - 1]
        found.append({"id": p.stem, "speaker_id": f"ravdess/{meta['actor']}", "emotion": meta["emotion"],
                      "transcript": text})  # fmt: skip
    result = lexical.probe_corpus("ravdess", found)
    assert result.n == 1200 and result.folds == 5
    assert abs(result.unweighted_accuracy - 1 / 8) < 0.05  # what we saw: 0.125
    assert result.accuracy <= result.chance + 0.05
    flagged = [i for i, (p, lab) in result.items.items() if p >= 0.5]
    assert not flagged


def test_lexical_probe_sees_words_that_give_the_label_away() -> None:
    rng = __import__("random").Random(0)
    tells = {"happy": "what a wonderful day", "sad": "i miss her so much", "angry": "this is outrageous"}
    found = [{"id": f"u{i}", "speaker_id": f"s{i % 6}", "emotion": e,
              "transcript": f"{tells[e] if i % 4 else 'well'} {rng.choice(['today', 'now', 'again'])}"}
             for i, e in enumerate(rng.choice(list(tells)) for _ in range(120))]  # fmt: skip
    result = lexical.probe_corpus("told", found)
    assert result.accuracy > 0.7 and result.unweighted_accuracy > 0.7
    row = next(r for r in found if r["transcript"].startswith(tells[r["emotion"]]))
    out = lexical.lexical_row({**row, "corpus": "told", "flags": []}, {"told": result}, 0.5)
    assert out["words_only_label"] == row["emotion"] and out["flags"] == [lexical.FLAG]
