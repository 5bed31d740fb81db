"""The offline backbone from pretrained parts: Whisper base's encoder (frozen), a projector, SmolLM2 with LoRA."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pallm.model import build
from pallm.train import steps
from pallm.train.checkpoints import mark_finished
from pallm.train.collate import AudioCollator, waveform
from pallm.train.config import AlignSettings, LoraSettings, ModelConfig, SFTSettings, TrainConfig
from pallm.train.data import examples

pytest.importorskip("trl", reason="training needs the train extra: pip install -e '.[train]'")
SUMMARY = 2


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelConfig, Path]:
    """The backbone assembled once (about a minute: the GGUF is converted) and saved: its config and folder. Two
    summary tokens per clip (configs/train-offline.yaml has four)."""
    root = tmp_path_factory.mktemp("offline")
    cfg = ModelConfig(family="offline", encoder="base", dtype="float32", encoder_cache=str(root / "frames"),
                      summary_tokens=SUMMARY)  # fmt: skip
    build(cfg).save(root / "model")
    return cfg, root / "model"


def test_audio_tokens_carry_the_encoder_frames(offline: tuple[ModelConfig, Path], trainable: Path) -> None:
    cfg, folder = offline
    speech = build(cfg, checkpoint=folder)
    rows = examples(trainable, splits=["train"])[:2]
    batch = AudioCollator(speech.processor)(rows)
    audio_id = speech.model.config.audio_token_index
    for k in range(2):
        frames = int(batch["feature_attention_mask"][k].sum())
        assert int((batch["input_ids"][k] == audio_id).sum()) == math.ceil(frames / 4) + SUMMARY
    assert batch["input_features"].shape[-1] == 512, "Whisper base's frames"
    with torch.no_grad():
        heard = speech.model(**batch).loss
        deaf = speech.model(**{**batch, "input_features": torch.zeros_like(batch["input_features"])}).loss
        # A pretrained decoder already knows the language: far below the uniform guess over its vocabulary.
        assert heard < 0.5 * math.log(len(speech.tokenizer))
    assert not torch.isclose(heard, deaf), "the audio does not reach the decoder"


def test_lora_sft_trains_adapters_and_projector_only_and_survives_a_reload(
    offline: tuple[ModelConfig, Path], trainable: Path, tmp_path: Path
) -> None:
    from pallm.train.sft import train_sft

    cfg, folder = offline
    cfg = cfg.model_copy(update={"lora": LoraSettings(r=4, alpha=8)})
    speech = build(cfg, checkpoint=folder)
    before = {n: p.detach().clone() for n, p in speech.model.named_parameters()}
    settings = SFTSettings(max_steps=2, batch_size=4, learning_rate=1e-3, save_steps=100)
    history = train_sft(speech, examples(trainable, splits=["train"])[:8], settings, tmp_path)
    assert len([e for e in history if "loss" in e]) == 2
    changed = {n for n, p in speech.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n or "projector" in n for n in changed), sorted(changed)[:5]
    assert any("projector" in n for n in changed) and any("lora_" in n for n in changed)

    rows = examples(trainable, splits=["validation"])[:2]
    batch = AudioCollator(speech.processor)(rows)
    speech.model.eval()
    with torch.no_grad():
        logits = speech.model(**batch).logits
    speech.save(tmp_path / "saved")  # LoRA merged into the decoder's weights
    again = build(cfg.model_copy(update={"lora": None}), checkpoint=tmp_path / "saved")
    with torch.no_grad():
        torch.testing.assert_close(again.model(**batch).logits, logits, atol=1e-3, rtol=1e-3)


def test_the_sft_loss_runs_the_lm_head_over_the_answers_only_and_equals_the_models_own(
    offline: tuple[ModelConfig, Path], trainable: Path, tmp_path: Path
) -> None:
    from transformers import Trainer

    from pallm.train.sft import answer_span, sft_trainer

    cfg, folder = offline
    speech = build(cfg.model_copy(update={"lora": LoraSettings(r=4, alpha=8)}), checkpoint=folder)
    rows = examples(trainable, splits=["train"])[:4]
    trainer = sft_trainer(speech, rows, SFTSettings(max_steps=1, batch_size=4, save_steps=100), tmp_path)
    batch = AudioCollator(speech.processor)(rows)
    first, last = answer_span(batch["labels"])
    answers = (batch["labels"][:, 1:] != -100).nonzero()[:, 1]
    assert (first, last) == (int(answers.min()), int(answers.max()) + 1)
    assert last - first < 0.6 * batch["input_ids"].size(1), "the prompt and audio are most of each sequence"
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
        own = Trainer.compute_loss(trainer, trainer.model, dict(batch))
        assert outputs.logits.shape[:2] == (4, last - first)
        torch.testing.assert_close(loss, own, atol=1e-5, rtol=1e-5)
        n = int((batch["labels"] != -100).sum())  # as the Trainer counts the tokens of accumulated micro-batches
        torch.testing.assert_close(trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=2 * n),
                                   own / 2, atol=1e-5, rtol=1e-5)  # fmt: skip


def test_generation_batches_by_task_and_answers_in_order(offline: tuple[ModelConfig, Path], trainable: Path) -> None:
    from pallm.train import evaluate

    cfg, folder = offline
    speech = build(cfg, checkpoint=folder)  # a pretrained decoder: its answers differ by prompt
    rows = examples(trainable, splits=["train"])[:6]
    tasks = [r["task"] for r in rows]
    assert len(set(tasks)) == 2 and tasks != sorted(tasks), "the fixture interleaves the two tasks"
    together = evaluate.generate(speech, rows, max_new_tokens=6, batch_size=3)
    # Batched by task, the batches are those of each task alone: the same greedy answers, put back in order.
    alone = {}
    for task in set(tasks):
        mine = [k for k, t in enumerate(tasks) if t == task]
        answers = evaluate.generate(speech, [rows[k] for k in mine], max_new_tokens=6, batch_size=3)
        alone.update(zip(mine, answers, strict=True))
    assert together == [alone[k] for k in range(len(rows))]
    first, second = ({alone[k] for k, t in enumerate(tasks) if (t == tasks[0]) == same} for same in (True, False))
    assert not first & second, f"the two tasks' answers must differ for the order to show: {together}"


def test_pooling_sets_the_audio_tokens_per_second(offline: tuple[ModelConfig, Path], trainable: Path) -> None:
    from pallm.model.offline import pool_frames

    frames = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    pooled = pool_frames(frames, 4)
    assert pooled.shape == (3, 3)
    np.testing.assert_allclose(pooled[0], frames[:4].mean(axis=0))
    np.testing.assert_allclose(pooled[2], frames[8:].mean(axis=0))  # a shorter last group averages what it has

    cfg, folder = offline
    speech = build(cfg, checkpoint=folder)
    assert speech.model.config.projector_norm and isinstance(speech.model.projector.norm, torch.nn.LayerNorm)
    rows = examples(trainable, splits=["train"])[:2]
    audio_id = speech.model.config.audio_token_index
    counts = {}
    for pool in (1, 2, 5):
        speech.processor.pool = pool
        batch = AudioCollator(speech.processor)(rows)
        counts[pool] = [int((batch["input_ids"][k] == audio_id).sum()) for k in range(2)]
    seconds = [len(waveform(r["audio"])) / 16_000 for r in rows]
    for pool, tokens in counts.items():
        for n, s in zip(tokens, seconds, strict=True):
            frames = math.ceil(s / 0.02)
            assert n == math.ceil(math.ceil(frames / pool) / 4) + SUMMARY, (pool, n, s)
    assert counts[2][0] < counts[1][0] and counts[5][0] < counts[2][0]


def test_summary_tokens_follow_each_clips_frame_tokens(offline: tuple[ModelConfig, Path], trainable: Path) -> None:
    cfg, folder = offline
    speech = build(cfg, checkpoint=folder)
    rows = sorted(examples(trainable, splits=["train"]), key=lambda r: len(r["audio"]))
    rows = [rows[0], rows[-1]]  # a short clip padded in the batch beside a long one
    batch = AudioCollator(speech.processor)(rows)
    audio_id = speech.model.config.audio_token_index
    with torch.no_grad():
        embeds = speech.model.embed(batch["input_ids"], batch["input_features"], batch["feature_attention_mask"])
        for k, row in enumerate(rows):
            alone = AudioCollator(speech.processor)([row])
            projected = speech.model.projector(alone["input_features"], alone["feature_attention_mask"])[0]
            placed = embeds[k][batch["input_ids"][k] == audio_id]
            assert placed.shape == projected.shape
            # The padding of the short clip changes neither its frame tokens nor its summary of them.
            torch.testing.assert_close(placed, projected, atol=1e-5, rtol=1e-4)
    short, long = (speech.model.projector(AudioCollator(speech.processor)([r])["input_features"])[0, -SUMMARY:]
                   for r in rows)  # fmt: skip
    assert not torch.allclose(short, long), "two clips got the same summary"


def test_speaker_norm_standardises_frames_by_each_clips_own_speaker(
    offline: tuple[ModelConfig, Path], trainable: Path, tmp_path: Path
) -> None:
    from pallm.train.data import read_rows

    model_cfg, folder = offline
    normed = tmp_path / "model"  # the saved backbone, its config asking for per-speaker frames
    normed.mkdir()
    for f in folder.iterdir():
        (normed / f.name).symlink_to(f)
    config = json.loads((folder / "config.json").read_text())
    (normed / "config.json").unlink()
    (normed / "config.json").write_text(json.dumps({**config, "speaker_norm": True}))

    speech = steps.build_for(trainable, model_cfg, normed, seed=0)
    rows = read_rows(trainable, None, ("speaker_id", "audio")).to_pylist()
    speakers = {r["speaker_id"] for r in rows}
    assert len(speakers) == 3 and set(speech.processor.speakers.stats) == speakers
    proc, encoder = speech.processor, speech.processor.encoder
    for speaker in speakers:
        clips = [waveform(r["audio"]["bytes"]) for r in rows if r["speaker_id"] == speaker]
        heard = np.concatenate(proc.frames(clips))
        assert np.abs(heard.mean(axis=0)).max() < 1e-3, "the speaker's frames are not centred"
        varying = np.concatenate(encoder(clips)).std(axis=0) > 1e-3
        np.testing.assert_allclose(heard.std(axis=0)[varying], 1.0, atol=1e-3)
    other = waveform(rows[0]["audio"]["bytes"]) * 0.5  # audio the speakers were not fitted on
    with pytest.raises(KeyError, match="speaker is unknown"):
        proc(["<|AUDIO|> hi"], [other])
    assert not build(model_cfg, checkpoint=folder).processor.speaker_norm, "a model saved without it keeps its frames"


def test_alignment_trains_only_the_projector_resumes_after_a_kill_and_lowers_its_loss(
    offline: tuple[ModelConfig, Path], trainable: Path, tmp_path: Path
) -> None:
    model_cfg, folder = offline
    # LoRA is configured for SFT; the alignment (lora off) must leave the decoder as it is.
    lora_cfg = model_cfg.model_copy(update={"lora": LoraSettings(r=4, alpha=8)})
    cfg = TrainConfig(model=lora_cfg, align=AlignSettings(max_steps=10, batch_size=4, save_steps=2, learning_rate=5e-3))
    out = tmp_path / "run"
    steps.start_run(trainable, out, cfg)
    shutil.copytree(folder, out / "base" / "model")  # the initial model this config builds, assembled once
    mark_finished(out / "base", {"seed": cfg.seed})

    proc = subprocess.Popen([sys.executable, "-m", "pallm.train.launch", "align", str(trainable), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (out / "align" / "checkpoint-2" / "trainer_state.json").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "the alignment wrote no checkpoint"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (out / "align" / "done.json").exists(), "killed before the alignment finished"

    record = steps.run_align(trainable, out, cfg)
    assert record["resumed_from"] in ("checkpoint-2", "checkpoint-4"), "the rerun started the alignment over"
    losses = [(e["step"], e["loss"]) for e in record["history"] if "loss" in e]
    assert [step for step, _ in losses] == list(range(1, 11)), "a step was lost or repeated"
    first, last = (sum(loss for _, loss in part) / len(part) for part in (losses[:2], losses[-3:]))
    assert last < 0.85 * first, f"the alignment loss did not fall: {losses}"

    before, after = load_file(out / "base" / "model" / "model.safetensors"), load_file(out / "align" / "model" /
                                                                                     "model.safetensors")  # fmt: skip
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith("projector.") for n in changed), sorted(changed)[:5]
    assert any(n.startswith("projector.summary.") for n in changed), "the summary head did not train"
    assert not torch.equal(after["projector.stats_scale"], torch.ones_like(after["projector.stats_scale"])), (
        "the summary's scaler was not fitted to the training clips"
    )
    weights = [v for n, v in before.items() if n.startswith("projector.") and ".stats_" not in n]  # not buffers
    assert record["trained_parameters"] == sum(v.numel() for v in weights)
    assert steps.run_align(trainable, out, cfg) == json.loads((out / "align" / "done.json").read_text())
    assert steps.sft_start(out, cfg) == out / "align" / "model"


def test_sft_can_keep_the_aligned_projector_and_replay_the_alignment(
    offline: tuple[ModelConfig, Path], trainable: Path, tmp_path: Path
) -> None:
    model_cfg, folder = offline
    lora_cfg = model_cfg.model_copy(update={"lora": LoraSettings(r=4, alpha=8)})
    sft = SFTSettings(max_steps=2, batch_size=4, learning_rate=1e-3, save_steps=100, projector=False,
                      align_replay=0.25)  # fmt: skip
    cfg = TrainConfig(model=lora_cfg, align=AlignSettings(target="labels"), sft=sft)
    out = tmp_path / "run"
    steps.start_run(trainable, out, cfg)
    shutil.copytree(folder, out / "align" / "model")  # stands for an aligned model: only its projector matters
    mark_finished(out / "align", {"history": []})

    mix = steps.sft_examples(trainable, cfg)
    replayed = [r for r in mix if r.get("task") == "align"]
    assert len(mix) == len(steps.train_examples(trainable, cfg)) + len(replayed)
    assert abs(len(replayed) / len(mix) - 0.25) < 0.05, (len(replayed), len(mix))
    assert all(r["completion"][0]["content"][0]["text"].startswith("Sentiment: ") for r in replayed)
    assert {r["split"] for r in replayed} == {"train"}, "replay must come from the training splits only"

    record = steps.run_sft(trainable, out, cfg)
    assert record["examples"] == len(mix)
    aligned, tuned = (load_file(out / stage / "model" / "model.safetensors") for stage in ("align", "sft"))
    projector = [n for n in aligned if n.startswith("projector.")]
    assert projector and all(torch.equal(aligned[n], tuned[n]) for n in projector), "the frozen projector moved"
    decoder = [n for n in aligned if n not in projector]
    assert any(not torch.equal(aligned[n], tuned[n]) for n in decoder), "the decoder did not train"
    with pytest.raises(ValueError, match="configure an align stage"):
        steps.sft_examples(trainable, cfg.model_copy(update={"align": None}))


def test_grpo_rollouts_decode_in_bfloat16_under_mixed_precision(
    offline: tuple[ModelConfig, Path], trainable: Path, tmp_path: Path
) -> None:  # fmt: skip
    from pallm.train.config import RLSettings
    from pallm.train.grpo import grpo_trainer
    from pallm.train.rewards import format_reward

    cfg, folder = offline
    speech = build(cfg.model_copy(update={"mixed_precision": "bf16"}), checkpoint=folder)
    decoded: set[torch.dtype] = set()
    layer = next(m for n, m in speech.model.named_modules() if n.endswith("mlp.down_proj"))
    # One new position at a time with the cache: a generation step, not a log-probability pass.
    layer.register_forward_hook(lambda _m, _i, out: decoded.add(out.dtype) if out.shape[1] == 1 else None)
    rl = RLSettings(max_steps=1, batch_size=2, num_generations=2, max_completion_length=4, beta=0.0,
                    reward_weights={"format": 1.0}, save_steps=100)  # fmt: skip
    grpo_trainer(speech, examples(trainable, splits=["train"]), {"format": format_reward}, rl, tmp_path).train()
    # The offline model generates through its language model's own `generate`, which accelerate does not wrap.
    assert decoded == {torch.bfloat16}, "the rollouts decoded outside autocast"
