"""Training on the CPU with the tiny random Qwen2-Audio, on shards built from real RAVDESS clips: the collator's
masks, SFT, the audio-aware GRPO trainer, the reply rewards, evaluation, and whole runs through Prefect."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run_cli
from openai_double import serve
from reliability import Ledger

from pallm.model import build
from pallm.train import evaluate, steps
from pallm.train.collate import IGNORE, AudioCollator
from pallm.train.config import ModelConfig, RLSettings, SFTSettings, TrainConfig
from pallm.train.data import examples
from pallm.train.rewards import REPLY, UNDERSTAND, JudgeReward, ReplySimilarityReward, format_reward

pytest.importorskip("trl", reason="training needs the train extra: pip install -e '.[train]'")

TINY = ModelConfig(size="tiny", dtype="float32")


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_collator_trains_only_on_the_answer(trainable: Path, tiny_model: Path) -> None:
    speech = build(TINY, checkpoint=tiny_model)
    rows = examples(trainable, splits=["train"])[:3]
    batch = AudioCollator(speech.processor)(rows)
    tok = speech.tokenizer
    audio_id = tok.convert_tokens_to_ids("<|AUDIO|>")
    for k, row in enumerate(rows):
        ids, labels = batch["input_ids"][k], batch["labels"][k]
        target = row["completion"][0]["content"][0]["text"]
        assert tok.decode(ids[labels != IGNORE]) == f"{target}<|im_end|>\n", "labels are the answer, nothing else"
        assert not (labels[ids == audio_id] != IGNORE).any()
        # Whisper's two stride-2 steps: one audio token per 40 ms of the clip's real (unpadded) frames.
        frames = int(batch["feature_attention_mask"][k].sum())
        assert int((ids == audio_id).sum()) == ((frames - 1) // 2 + 1 - 2) // 2 + 1
    assert {r["task"] for r in rows} <= {UNDERSTAND, REPLY}


def test_an_answer_prefix_trains_without_the_end_of_the_turn(trainable: Path, tiny_model: Path) -> None:
    from pallm.train.data import align_examples

    speech = build(TINY, checkpoint=tiny_model)
    tok = speech.tokenizer
    for prompt, prefix in (("understand", True), ("align", False)):
        rows = align_examples(trainable, ["train"], False, prompt)[:2]
        batch = AudioCollator(speech.processor)([*rows, examples(trainable, splits=["train"])[0]])
        for k, row in enumerate(rows):
            ids, labels = batch["input_ids"][k], batch["labels"][k]
            target = row["completion"][0]["content"][0]["text"]
            # Under the understanding prompt the labels begin the answer: learning to stop there is unlearnt in SFT.
            assert tok.decode(ids[labels != IGNORE]) == (target if prefix else f"{target}<|im_end|>\n")
        assert tok.decode(batch["input_ids"][2][batch["labels"][2] != IGNORE]).endswith("<|im_end|>\n")


def test_sft_lowers_the_loss(trainable: Path, tiny_model: Path, tmp_path: Path) -> None:
    from pallm.train.sft import train_sft

    speech = build(TINY, checkpoint=tiny_model)
    history = train_sft(
        speech, examples(trainable, splits=["train"]),
        SFTSettings(max_steps=8, batch_size=4, learning_rate=2e-3, warmup_ratio=0, save_steps=100), tmp_path,
    )  # fmt: skip
    loss = [e["loss"] for e in history if "loss" in e]
    assert len(loss) == 8
    assert sum(loss[-3:]) / 3 < loss[0] - 0.3, f"the loss did not fall: {loss}"


@pytest.mark.parametrize("mixed", ["no", "bf16"])
def test_mixed_precision_computes_in_bfloat16_and_keeps_float32_weights(
    trainable: Path, tiny_model: Path, tmp_path: Path, mixed: str
) -> None:  # fmt: skip
    from pallm.train.sft import sft_args, train_sft

    settings = SFTSettings(max_steps=2, batch_size=2, learning_rate=1e-3, warmup_ratio=0, save_steps=100)
    sft_args(settings, tmp_path, 0, bf16=True)  # a bf16 trainer configured earlier in the process must not leak
    cfg = TINY.model_copy(update={"mixed_precision": mixed})
    speech = build(cfg, checkpoint=tiny_model)
    before = _params(speech.model)
    computed: set[torch.dtype] = set()
    layer = next(m for n, m in speech.model.named_modules() if n.endswith("mlp.down_proj"))
    layer.register_forward_hook(lambda _m, _i, out: computed.add(out.dtype))
    train_sft(speech, examples(trainable, splits=["train"]), settings, tmp_path)
    assert computed == {torch.bfloat16 if mixed == "bf16" else torch.float32}
    changed = [n for n, p in speech.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed and all(p.dtype == torch.float32 for p in speech.model.parameters()), "master weights stay float32"
    answering = build(steps.inference_model(cfg), checkpoint=tiny_model)
    assert {p.dtype for p in answering.model.parameters()} == {torch.bfloat16 if mixed == "bf16" else torch.float32}


def test_the_labels_only_stop_speaks_transformers_protocol(tiny_model: Path) -> None:
    tok = build(TINY, checkpoint=tiny_model).tokenizer
    answers = ["Sentiment: negative\nEmotion: angry\nReasoning", "Sentiment: negative\nEmo", "Reasoning: loud."]
    answer_ids = [tok(a, return_tensors="pt").input_ids[0] for a in answers]
    width = max(len(a) for a in answer_ids)  # what generation appends: answers, padded where they have ended
    new = torch.stack([torch.cat([a, torch.full((width - len(a),), tok.pad_token_id)]) for a in answer_ids])
    prompt = tok("<|im_start|>assistant\n", return_tensors="pt").input_ids.expand(len(answers), -1)
    # A decoder-only model passes the prompt's ids and the new ones; one generating from embeddings, the new only.
    for ids in (torch.cat([prompt, new], dim=1), new):
        stop = evaluate._LabelsGiven(tok, emotion=[True, True, True])
        first = [stop(ids[:, : ids.size(1) - width + 1], None)]
        done = stop(ids, None)
        assert not first[0].any() and done.dtype == torch.bool and done.tolist() == [True, False, False]


def test_grpo_sees_the_audio_scores_both_tasks_and_updates(trainable: Path, tiny_model: Path, tmp_path: Path) -> None:
    from trl.trainer.utils import pad

    from pallm.train.grpo import grpo_trainer

    seen: list[dict] = []

    def spy(completions: list, task: list[str], audio: list[bytes], **_: object) -> list[float]:
        """A reward that records what TRL hands it and prefers longer completions (so groups differ)."""
        seen.append({"task": list(task), "audio": len(audio), "n": len(completions)})
        return [float(len(c[0]["content"])) / 100 for c in completions]

    speech = build(TINY, checkpoint=tiny_model)
    before = _params(speech.model)
    cfg = RLSettings(max_steps=2, batch_size=4, num_generations=2, max_completion_length=10, beta=0.04,
                     learning_rate=1e-2, reward_weights={"spy": 1.0, "format": 0.5}, save_steps=100)  # fmt: skip
    trainer = grpo_trainer(speech, examples(trainable, splits=["train"]), {"spy": spy, "format": format_reward},
                           cfg, tmp_path)  # fmt: skip
    trainer.train()
    logged = [e for e in trainer.state.log_history if "reward" in e]
    assert len(logged) == 2 and all("rewards/format_reward/mean" in e and "rewards/spy/mean" in e for e in logged)
    assert seen and all(s["audio"] == s["n"] == 4 for s in seen), "every completion's row reaches the rewards"
    changed = [n for n, p in speech.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, "the RL steps changed no parameter"

    # The audio reaches the log-probabilities: the same completion scores differently with silent features.
    rows = examples(trainable, splits=["train"])[:2]
    trainer._rollout_audio = [r["audio"] for r in rows]
    ids, _, audio = trainer._tokenize_prompts([r["prompt"] for r in rows])
    seq = pad([torch.tensor(i) for i in ids], padding_value=speech.tokenizer.pad_token_id, padding_side="left")
    mask = pad([torch.ones(len(i), dtype=torch.long) for i in ids], padding_value=0, padding_side="left")
    trainer._audio = audio
    with torch.no_grad():
        heard, _, _ = trainer._get_per_token_logps_and_entropies(speech.model, seq, mask, 5)
        trainer._audio = {**audio, "input_features": torch.zeros_like(audio["input_features"])}
        deaf, _, _ = trainer._get_per_token_logps_and_entropies(speech.model, seq, mask, 5)
    assert not torch.allclose(heard, deaf), "log-probabilities do not depend on the audio"


def test_the_reply_similarity_prefers_the_tone_aware_reply() -> None:
    reward = ReplySimilarityReward()
    teacher = "You sound really upset. I'm sorry, let's sort this out together right now."
    words_only = "The dogs are sitting by the door."
    completions = [teacher, words_only, "Photosynthesis converts light into chemical energy.", "Reasoning: x"]
    task = [REPLY, REPLY, REPLY, UNDERSTAND]
    scores = reward(completions, task, reply=[teacher] * 4, words_only_reply=[words_only] * 4)
    assert scores[3] is None, "not a reply row"
    assert scores[0] > scores[2] > scores[1], scores
    assert scores[0] == pytest.approx(1 - reward.similarities([teacher], [words_only])[0], abs=1e-4)


def test_the_reply_judge_speaks_openai_and_a_failure_costs_one_row() -> None:
    teacher = "Oh no, you sound furious. What happened?"
    columns = {"task": [REPLY, REPLY, UNDERSTAND, REPLY], "reply": [teacher] * 4,
               "transcript": ["Kids are talking"] * 4, "emotion": ["angry"] * 4,
               "cue_words": [["loudness: loud"]] * 4}  # fmt: skip
    with serve() as double:
        judge = JudgeReward(double.base_url, "judge-model")
        scores = judge([teacher, "Nice weather.", "Reasoning: x", "Okay."], **columns)
        assert scores[:3] == [pytest.approx(8 / 9), pytest.approx(1 / 9), None], "grades 9 and 2, scaled"
        double.faults.extend(["500"] * 3)  # the first call and both retries fail
        assert judge(["Okay."], **{k: v[:1] for k, v in columns.items()}) == [None]
        assert [s.task for s in double.seen].count("grade") == 3 + 3, "three replies graded, then one call tried thrice"


def test_evaluation_scores_hand_built_answers() -> None:
    def row(k: int, task: str, sentiment: str, emotion: str) -> dict:
        return {"id": f"x{k}", "corpus": "ravdess", "split": "test", "task": task, "sentiment": sentiment,
                "emotion": emotion, "reply": "r", "words_only_reply": "w", "words_only_label": "neutral"}  # fmt: skip

    rows = [row(0, UNDERSTAND, "negative", "angry"), row(1, UNDERSTAND, "negative", "sad"),
            row(2, UNDERSTAND, "positive", "happy"), row(3, UNDERSTAND, "neutral", "calm"),
            row(4, REPLY, "neutral", "calm")]  # fmt: skip
    texts = ["Reasoning: loud.\nCues: loudness: loud\nSentiment: negative\nEmotion: angry",
             "Reasoning: loud.\nCues: none\nSentiment: negative\nEmotion: angry",
             "Reasoning: flat.\nCues: none\nSentiment: neutral\nEmotion: calm",
             "no idea", "Hello there friend."]  # fmt: skip
    scores = evaluate.score_rows(evaluate.answer_rows(rows, texts), None)
    s = scores["sentiment"]["ravdess/test"]
    assert (s["n"], s["wa"], s["invalid"]) == (4, 0.5, 1)
    assert s["ua"] == pytest.approx((1 + 0 + 0) / 3), "recall: negative 2/2, positive 0/1, neutral 0/1 (invalid)"
    e = scores["emotion"]["ravdess/test"]
    assert list(e["labels"]) == ["angry", "calm", "happy", "sad"] and e["wa"] == 0.25
    assert list(e["confusion"][3]) == [1, 0, 0, 0, 0], "sad was called angry"
    words = evaluate.score_rows(evaluate.words_only_rows(rows), None)["sentiment"]["ravdess/test"]
    assert words["wa"] == 0.25 and words["invalid"] == 0, "the probe said neutral every time: right once"


def _tiny_run_config(path: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "train-tiny.yaml").read_text())
    cfg["sft"].update(max_steps=4, batch_size=2, save_steps=2)
    cfg["rl"].update(max_steps=2, batch_size=2, num_generations=2, max_completion_length=8)
    cfg["eval"].update(splits=["validation"], limit=2, max_new_tokens=8)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.reliability
def test_a_deployment_run_killed_mid_sft_resumes_through_the_cli(
    prefect_server: dict[str, str], trainable: Path, tmp_path: Path, ledger: Ledger
) -> None:
    config, out = _tiny_run_config(tmp_path / "tiny.yaml"), tmp_path / "run"
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    serve_proc = subprocess.Popen(
        [sys.executable, "-m", "pallm.cli", "serve"], cwd=ROOT, env=prefect_server, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([prefect, "deployment", "inspect", "train-pallm/cpu"], env=prefect_server,
                             capture_output=True).returncode:  # fmt: skip
            assert serve_proc.poll() is None and time.monotonic() < deadline, "pallm serve registered no train-pallm"
            time.sleep(1)
        inspect = [prefect, "deployment", "inspect", "evaluate-pallm/default"]
        assert subprocess.run(inspect, env=prefect_server, capture_output=True).returncode == 0
        run = subprocess.run([prefect, "deployment", "run", "train-pallm/cpu", "--param", f"dataset={trainable}",
                              "--param", f"out={out}", "--param", f"config={config}"],
                             env=prefect_server, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        checkpoint = out / "sft" / "checkpoint-2" / "trainer_state.json"
        deadline = time.monotonic() + 420
        while not checkpoint.is_file():
            assert time.monotonic() < deadline and serve_proc.poll() is None, "no SFT checkpoint appeared"
            time.sleep(0.5)
    finally:
        os.killpg(serve_proc.pid, signal.SIGKILL)  # a crash: no clean shutdown
        serve_proc.wait(timeout=30)
    assert not (out / "sft" / "done.json").exists(), "killed before SFT finished"
    assert (out / "eval" / "before-sft.json").is_file()

    proc = run_cli(["train", "--dataset", str(trainable), "--out", str(out), "--config", str(config)], prefect_server)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    sft = json.loads((out / "sft" / "done.json").read_text())
    assert sft["resumed_from"] in ("checkpoint-2", "checkpoint-4"), "the rerun started SFT over"
    logged = [e["step"] for e in sft["history"] if "loss" in e]
    assert logged == [1, 2, 3, 4]
    tried = f"worker killed at the first checkpoint, `pallm train` resumed from {sft['resumed_from']}"
    ledger.record("training: SIGKILL mid-SFT", tried, items=4, delivered=len(set(logged)),
                  duplicates=len(logged) - len(set(logged)))  # fmt: skip
    rl = json.loads((out / "rl" / "done.json").read_text())
    assert len([e for e in rl["history"] if "reward" in e]) == 2
    scored = set(steps.SYSTEMS) - {"encoder-probe"}  # the tiny Qwen2-Audio trains its encoder: no probe of it
    assert set(summary["ua"]) == scored
    report = (out / "report.md").read_text()
    for system in scored:
        assert f"| ravdess/validation | {system} | 2 |" in report
    assert (out / "rl" / "model" / "README.md").is_file() and (out / "rl_rewards.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="another dataset or configuration"):
        steps.start_run(trainable, out, TrainConfig(name="other"))


def test_train_refuses_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # no server: must fail before Prefect
    proc = run_cli(["train", "--dataset", str(tmp_path), "--out", str(tmp_path / "run")], env)
    assert proc.returncode == 2 and "not a built dataset" in proc.stderr


def test_the_alignment_freezes_all_but_the_projector_and_with_lora_the_adapters(tiny_model: Path) -> None:
    from pallm.train.config import LoraSettings

    speech = build(TINY.model_copy(update={"lora": LoraSettings(r=2, alpha=4)}), checkpoint=tiny_model)
    trains = steps.freeze_for_alignment(speech.model, lora=False)
    names = [n for n, p in speech.model.named_parameters() if p.requires_grad]
    assert names and all("multi_modal_projector" in n and "original_module" not in n for n in names), names[:4]
    assert trains == sum(p.numel() for p in speech.model.parameters() if p.requires_grad)
    steps.freeze_for_alignment(speech.model, lora=True)
    names = {n for n, p in speech.model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in names) and not any("original_module" in n for n in names)
    assert not any("audio_tower" in n and "lora_" not in n for n in names), "the audio encoder stays frozen"
