"""The offline backbone from pretrained parts: Whisper base's encoder (frozen), a projector, SmolLM2 with LoRA."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pallm.model import build
from pallm.train.collate import AudioCollator, waveform
from pallm.train.config import LoraSettings, ModelConfig, SFTSettings
from pallm.train.data import examples

pytest.importorskip("trl", reason="training needs the train extra: pip install -e '.[train]'")


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelConfig, Path]:
    """The backbone assembled once (about a minute: the GGUF is converted) and saved: its config and folder."""
    root = tmp_path_factory.mktemp("offline")
    cfg = ModelConfig(family="offline", encoder="base", dtype="float32", encoder_cache=str(root / "frames"))
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
        assert frames % 4 == 0 and int((batch["input_ids"][k] == audio_id).sum()) == frames // 4
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
            assert n == math.ceil(math.ceil(frames / pool) / 4), (pool, n, s)
    assert counts[2][0] < counts[1][0] and counts[5][0] < counts[2][0]
