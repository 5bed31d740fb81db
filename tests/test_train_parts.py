"""Training's plain parts: the answer format, the rewards on hand-made completions, the metrics on a
hand-built confusion matrix, and the examples built from a real reviewed dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from review_helpers import add_users
from sqlalchemy import select

from pallm.review import db, export, importer, workflow
from pallm.review.models import User
from pallm.train.answer import format_understanding, labels_given, parse_understanding
from pallm.train.data import examples
from pallm.train.evaluate import swap_audio, swap_permutation
from pallm.train.intervals import paired_changes
from pallm.train.metrics import INVALID, score, score_groups
from pallm.train.rewards import REPLY, UNDERSTAND, correctness_reward, format_reward, grounding_reward


def test_answers_round_trip_and_malformed_ones_are_refused() -> None:
    text = format_understanding("Her  pitch is high\nand she is loud.", ["pitch: high", "loudness: loud"], "negative",
                                "angry")  # fmt: skip
    assert text.splitlines()[:3] == [
        "Sentiment: negative",
        "Emotion: angry",
        "Reasoning: Her pitch is high and she is loud.",
    ]
    a = parse_understanding(text)
    assert (a.cues, a.sentiment, a.emotion) == (("pitch: high", "loudness: loud"), "negative", "angry")
    loose = parse_understanding("reasoning: slow and quiet,\nso probably sad.\nCUES: none\nSentiment: Negative.")
    assert (loose.reasoning, loose.cues, loose.sentiment, loose.emotion) == (
        "slow and quiet, so probably sad.", (), "negative", None)  # fmt: skip
    assert parse_understanding("Sentiment: positive") is None, "no reasoning"
    assert parse_understanding("Sentiment: positive\nEmotion: happy", need_reasoning=False).emotion == "happy"
    assert parse_understanding("Reasoning: she sounds happy.") is None, "no sentiment"


def test_labels_count_as_given_once_their_line_is_finished() -> None:
    answer = format_understanding("Loud.", ["loudness: loud"], "negative", "angry")
    given = [k for k in range(len(answer) + 1) if labels_given(answer[:k], emotion=True)]
    assert given and answer[: given[0]] == "Sentiment: negative\nEmotion: angry\n"
    assert all(labels_given(answer[:k], emotion=True) for k in range(given[0], len(answer) + 1))
    assert labels_given("Sentiment: negative\nE", emotion=False)
    assert not labels_given("Sentiment: negative\nE", emotion=True)
    reasoning_first = "Reasoning: loud.\nCues: none\nSentiment: negative\nEmotion: angry"
    assert not labels_given(reasoning_first, emotion=True), "its emotion line is not finished yet"
    assert labels_given(reasoning_first + "\n", emotion=True)


def _answer(sentiment: str, emotion: str, cues: str = "pitch: high", reasoning: str = "It sounds tense.") -> str:
    return f"Reasoning: {reasoning}\nCues: {cues}\nSentiment: {sentiment}\nEmotion: {emotion}"


def test_rewards_on_hand_made_completions() -> None:
    completions = [
        _answer("negative", "angry"),  # both right
        _answer("negative", "sad"),  # sentiment right, emotion wrong
        [{"role": "assistant", "content": _answer("positive", "happy")}],  # conversational form, wrong
        "I think she is angry.",  # no format
        "Oh no, that sounds frustrating. Let's sort it out together.",  # a reply row
    ]
    task = [UNDERSTAND] * 4 + [REPLY]
    gold = {"sentiment": ["negative"] * 5, "emotion": ["angry"] * 5}
    assert correctness_reward(completions, task, **gold) == [1.0, 0.5, 0.0, 0.0, None]
    assert correctness_reward(completions[:1], [UNDERSTAND], sentiment=["negative"], emotion=[None]) == [1.0]
    assert correctness_reward(completions[:1], [UNDERSTAND], sentiment=[None], emotion=["angry"]) == [None]
    assert format_reward(completions, task) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert format_reward([_answer("negative", "angry")], [REPLY]) == [0.0], "a reply is not a labelled answer"
    assert format_reward([_answer("grumpy", "angry")], [UNDERSTAND]) == [0.0], "not one of the three sentiments"

    measured = ["pitch: high", "loudness: quiet", "rate: fast"]
    grounding = grounding_reward(
        [
            _answer("negative", "angry", cues="pitch: high; rate: fast"),  # both supported
            _answer("negative", "angry", cues="pitch: high; loudness: loud"),  # one contradicted
            _answer("negative", "angry", cues="pitch: high", reasoning="She shouts loudly."),  # plain-word claim
            _answer("negative", "angry", cues="none", reasoning="It sounds bad."),  # no claim at all
            "not an answer",
            "a reply",
        ],
        [UNDERSTAND] * 5 + [REPLY], cue_words=[measured] * 6,
    )  # fmt: skip
    assert grounding == [1.0, 0.5, 0.5, 0.0, 0.0, None]


def test_metrics_on_a_hand_built_confusion_matrix() -> None:
    truth = ["a", "a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "b", None, "c"]
    s = score(truth, predicted, labels=["a", "b", "c"])
    assert s.wa == pytest.approx(4 / 6)
    assert s.ua == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # F1: a = 2PR/(P+R) with P=1, R=2/3 -> 0.8; b: P=1/2, R=1/2 -> 0.5; c: 1.
    assert s.macro_f1 == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    assert s.confusion == ((2, 1, 0, 0), (0, 1, 0, 1), (0, 0, 1, 0))
    assert s.invalid == 1 and INVALID not in s.labels
    rows = [{"corpus": "x", "split": sp, "t": t, "p": p} for sp, t, p in
            [("test", "a", "a"), ("test", "b", "a"), ("train", "a", "a")]]  # fmt: skip
    groups = score_groups(rows, "t", "p", labels=["a", "b"])
    assert set(groups) == {("x", "test"), ("x", "train")}
    assert (groups[("x", "test")].wa, groups[("x", "test")].ua) == (0.5, 0.5)
    with pytest.raises(ValueError):
        score(["a"], [])


def test_examples_follow_the_reviews(reviewable: Path, tmp_path: Path) -> None:
    ds = tmp_path / "dataset"
    shutil.copytree(reviewable, ds)
    before = examples(ds)
    rows = {e["id"] for e in before}
    assert {e["task"] for e in before} == {UNDERSTAND, REPLY} and len(before) == 2 * len(rows)
    # The gold targets are what the rewards call perfect.
    und = [e for e in before if e["task"] == UNDERSTAND]
    targets = [e["completion"] for e in und]
    assert format_reward(targets, [UNDERSTAND] * len(und)) == [1.0] * len(und)
    gold = correctness_reward(targets, [UNDERSTAND] * len(und), [e["sentiment"] for e in und],
                              [e["emotion"] for e in und])  # fmt: skip
    assert gold == [1.0] * len(und)
    assert all(e["audio"][:4] == b"RIFF" and e["prompt"][1]["content"][0] == {"type": "audio"} for e in before)

    url = f"sqlite:///{tmp_path / 'review.sqlite'}"
    add_users(url, ("ann1",))
    with db.open_db(url) as sessions, sessions() as s:
        importer.import_dataset(s, ds, sample=100, overlap=1)
        ann1 = s.scalar(select(User).where(User.name == "ann1"))
        rejected = workflow.next_item(s, ann1)
        workflow.save_decision(s, ann1, rejected, workflow.DecisionInput("reject", reasons=["invented_cue"]))
        edited = workflow.next_item(s, ann1)
        new = "The voice is flat and slow, which sounds sad."
        workflow.save_decision(s, ann1, edited, workflow.DecisionInput("edit", edits={"rationale": new}))
        export.export(s, ds)
    after = examples(ds)
    assert rejected.row_id not in {e["id"] for e in after}
    text = next(e for e in after if e["id"] == edited.row_id and e["task"] == UNDERSTAND)["completion"]
    assert f"\nReasoning: {new}\n" in text[0]["content"][0]["text"]
    assert len(after) == len(before) - 2

    only_understanding = examples(ds, understand_share=1.0)
    assert {e["task"] for e in only_understanding} == {UNDERSTAND}
    quarter = examples(ds, understand_share=0.25, seed=1)
    n_und = sum(e["task"] == UNDERSTAND for e in quarter)
    assert sum(e["task"] == REPLY for e in quarter) == len(rows) - 1 and 0 < n_und < len(rows) - 1
    assert quarter == examples(ds, understand_share=0.25, seed=1), "the mix is reproducible"


def test_evaluation_limit_takes_a_seeded_sample_not_the_first_ids(trainable: Path) -> None:
    from pallm.train.config import TrainConfig
    from pallm.train.steps import eval_examples

    cfg = TrainConfig.model_validate({"eval": {"splits": ["validation"], "limit": 3}})
    every = sorted({e["id"] for e in examples(trainable, 0.5, 0, ["validation"])})
    picked = eval_examples(trainable, cfg)
    ids = sorted({e["id"] for e in picked})
    assert len(ids) == 3 and set(ids) < set(every)
    assert ids != every[:3], "RAVDESS ids sort by emotion: the first ones would be a biased sample"
    assert sorted(e["task"] for e in picked) == sorted([UNDERSTAND, REPLY] * 3), "both tasks of each row"
    assert [e["id"] for e in eval_examples(trainable, cfg)] == [e["id"] for e in picked], "the same sample again"


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "configs").glob("train-*.yaml")) + sorted((ROOT / "bench" / "configs").glob("train-*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_training_configs_are_valid_and_leave_room_for_an_answer(path: Path) -> None:
    """Every training config in the repo loads; the ones of pretrained models generate enough tokens for a
    whole understanding answer (110 at most with the rules teacher's rationales, labels first)."""
    from pallm.train.config import TrainConfig

    cfg = TrainConfig.load(path)
    if cfg.model.family == "offline" or cfg.model.size != "tiny":
        assert cfg.eval.max_new_tokens >= 110 and cfg.rl.max_completion_length >= 110, path.name


def test_hand_built_answers_give_exact_scores_and_intervals_around_them() -> None:
    truth = ["angry"] * 4 + ["calm"] * 4 + ["sad"] * 2
    predicted = ["angry", "angry", "angry", "calm", "calm", "calm", None, "sad", "sad", "angry"]
    s = score(truth, predicted, labels=["angry", "calm", "sad"], seed=3)
    assert s.wa == pytest.approx(6 / 10)
    assert s.ua == pytest.approx((3 / 4 + 2 / 4 + 1 / 2) / 3)
    # F1: angry P=3/4 R=3/4 -> 3/4; calm P=2/3 R=2/4 -> 4/7; sad P=1/2 R=1/2 -> 1/2.
    assert s.macro_f1 == pytest.approx((3 / 4 + 4 / 7 + 1 / 2) / 3)
    for point, (low, high) in ((s.wa, s.wa_ci), (s.ua, s.ua_ci)):
        assert low < point < high, (low, point, high)
        assert high - low < 0.8, "an interval, not the whole range"
    again = score(truth, predicted, labels=["angry", "calm", "sad"], seed=3)
    assert (again.wa_ci, again.ua_ci) == (s.wa_ci, s.ua_ci), "seeded"
    perfect = score(truth, truth)
    assert perfect.ua_ci == (1.0, 1.0) and perfect.wa_ci == (1.0, 1.0)


def test_a_paired_interval_of_a_system_against_itself_is_zero_and_a_real_gain_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    truth = list(rng.choice(["a", "b", "c"], size=200))
    right = list(rng.random(200) < 0.5)
    same = paired_changes(truth, right, right, seed=1)
    assert all((c.delta, c.low, c.high, c.real) == (0.0, 0.0, 0.0, False) for c in same.values())
    better = [True if k % 2 else r for k, r in enumerate(right)]  # half the wrong answers put right
    gain = paired_changes(truth, right, better, seed=1)["ua"]
    assert gain.real and 0 < gain.low < gain.delta < gain.high

    def ua(correct: list[bool]) -> float:
        return score(truth, [t if c else None for t, c in zip(truth, correct, strict=True)]).ua

    assert gain.delta == pytest.approx(ua(better) - ua(right))
    noise = paired_changes(truth, right, list(rng.random(200) < 0.5), seed=1)["wa"]
    assert noise.low < noise.delta < noise.high


@pytest.mark.parametrize("labels", [list("aaabbc"), list("aaaaab"), list("abcdefgh") * 3, list("ab"), ["x"] * 5])
def test_the_swap_permutation_has_no_fixed_point_is_seeded_and_pairs_other_labels(labels: list[str]) -> None:
    perm = swap_permutation(labels, seed=7)
    assert sorted(perm) == list(range(len(labels))), "a permutation"
    assert all(perm[k] != k for k in range(len(labels))), "no clip hears itself"
    assert swap_permutation(labels, seed=7) == perm
    assert any(swap_permutation(labels, seed=s) != perm for s in range(8)) or len(labels) == 2
    largest = max(labels.count(x) for x in labels)
    same = sum(labels[perm[k]] == labels[k] for k in range(len(labels)))
    assert same == max(0, 2 * largest - len(labels)), "the fewest clips possible hear their own label"


def test_swapped_audio_stays_within_corpus_and_split() -> None:
    rows = [{"id": f"{split}{k}", "corpus": "c", "split": split, "task": UNDERSTAND, "audio": f"{split}{k}".encode(),
             "emotion": "angry" if k % 2 else "calm", "sentiment": "negative"}
            for split in ("test", "validation") for k in range(4)]  # fmt: skip
    rows.append({**rows[0], "task": REPLY})
    swapped = swap_audio(rows, seed=0)
    assert len(swapped) == 8, "understanding rows only"
    for r in swapped:
        assert r["swapped_from"] != r["id"] and r["swapped_from"][0] == r["id"][0], "same split, another clip"
        assert r["audio"] == r["swapped_from"].encode() and r["emotion"] != (
            "angry" if int(r["swapped_from"][-1]) % 2 else "calm"
        ), "the partner has the other label"


def test_a_perfect_listener_answers_the_clip_it_hears(tmp_path: Path) -> None:
    from pallm.train.report import listener_scores

    labels = [("angry", "negative"), ("sad", "negative"), ("happy", "positive"), ("calm", "neutral")] * 2
    rows = [{"id": f"c{k}", "corpus": "c", "split": "test", "task": UNDERSTAND, "audio": b"", "emotion": e,
             "sentiment": s} for k, (e, s) in enumerate(labels)]  # fmt: skip
    swapped = [{**r, "audio": None, "pred_sentiment": None, "pred_emotion": None} for r in swap_audio(rows, seed=3)]
    (tmp_path / "after-sft.swapped.jsonl").write_text("".join(json.dumps(r) + "\n" for r in swapped))
    heard = listener_scores(tmp_path)["c/test"]
    assert heard["emotion"] == 0.0, "every partner has another emotion"
    by_id = {r["id"]: r for r in rows}
    same = [by_id[r["swapped_from"]]["sentiment"] == r["sentiment"] for r in swapped if r["sentiment"] == "negative"]
    assert heard["sentiment"] == pytest.approx(sum(same) / len(same) / 3), "negative's recall only; the others 0"


def test_alignment_examples_say_what_is_heard_from_the_training_splits_only(trainable: Path) -> None:
    from pallm.train.data import align_examples, heard_target, read_rows

    target = heard_target(["pitch: high", "rate: fast"], "positive", "happy")
    assert target == "Sentiment: positive\nEmotion: happy\nCues: pitch: high; rate: fast"
    assert format_understanding("-", [], "positive", "happy").startswith(heard_target([], "positive", "happy", False))
    parsed = parse_understanding(target, need_reasoning=False)
    assert parsed is not None and (parsed.cues, parsed.sentiment, parsed.emotion) == (
        ("pitch: high", "rate: fast"), "positive", "happy")  # fmt: skip
    assert heard_target([], "neutral", None, cues=False) == "Sentiment: neutral"

    rows = align_examples(trainable, ["train"], cues=False)
    train = read_rows(trainable, ["train"], ("id", "split", "sentiment", "emotion")).to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in train if r["sentiment"])
    assert {r["split"] for r in rows} == {"train"}, "an evaluation clip would leak into training"
    gold = {r["id"]: r for r in train}
    for r in rows:
        text = r["completion"][0]["content"][0]["text"]
        assert text == heard_target([], gold[r["id"]]["sentiment"], gold[r["id"]]["emotion"], cues=False)
        assert r["prompt"][1]["content"][0] == {"type": "audio"} and r["audio"][:4] == b"RIFF"

    # Aligned under the understanding prompt, a clip's example asks exactly what SFT and the evaluation ask, and
    # its target is how that answer begins.
    asked = {e["id"]: e for e in examples(trainable, 0.5, 0, ["train"]) if e["task"] == "understand"}
    same = align_examples(trainable, ["train"], cues=False, prompt="understand")
    assert [r["id"] for r in same] == [r["id"] for r in rows] and set(asked) <= {r["id"] for r in same}
    for r in same:
        if r["id"] in asked:
            assert r["prompt"] == asked[r["id"]]["prompt"]
            answer = asked[r["id"]]["completion"][0]["content"][0]["text"]
            assert answer.startswith(r["completion"][0]["content"][0]["text"] + "\n")
    assert rows[0]["prompt"] != same[0]["prompt"]
    with pytest.raises(ValueError, match="unknown alignment prompt"):
        align_examples(trainable, ["train"], prompt="other")


def test_the_report_says_what_each_stage_did_and_how_many_rl_groups_tied() -> None:
    from pallm.train.config import TrainConfig
    from pallm.train.report import stage_lines
    from pallm.train.steps import run_systems

    align = {"history": [{"loss": 3.0, "step": 1}, {"loss": 1.0, "step": 2}, {"train_runtime": 5.0}]}
    rl = {"history": [{"reward": 0.25, "frac_reward_zero_std": 0.5}, {"reward": 0.75, "frac_reward_zero_std": 0.0}]}
    lines = stage_lines(align, {}, rl)
    assert lines == [
        "- Alignment: 2 steps, loss 3.000 → 1.000 (mean of the last 2: 2.000).",
        "- RL: 2 steps, mean reward 0.250 → 0.750 (all steps 0.500); groups whose rewards all tie: 25% of them.",
    ]
    assert "before-sft" in run_systems(TrainConfig())
    assert "before-sft" not in run_systems(TrainConfig.model_validate({"eval": {"before_sft": False}}))
