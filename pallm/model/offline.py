"""The offline backbone, assembled from pretrained parts that install from PyPI: Whisper's encoder (frozen,
CTranslate2, frames cached per clip), a projector that trains, and SmolLM2-135M-Instruct read from its GGUF by
transformers, with LoRA. No pretrained speech LLM can be downloaded offline; this one starts from real speech
and real language knowledge, so it shows whether RL adds to SFT.

It follows the Qwen2-Audio convention, so the collator, both trainers and the evaluation use it unchanged: the
processor mean-pools every `pool` encoder frames, expands `<|AUDIO|>` into one token per `stack` pooled frames
(so 50 / (pool * stack) audio tokens a second) and returns the pooled frames as
`input_features` with `feature_attention_mask`; the model puts the projected frames in those tokens' places.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    BatchFeature,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
)

from pallm.model.common import dtype_for, offline_tokenizer, with_lora
from pallm.model.speaker_norm import SpeakerNorm, fit_speaker_norm
from pallm.model.speech_lm import CHAT_TEMPLATE, SAMPLE_RATE, SpeechLM
from pallm.model.whisper_encoder import WhisperEncoder
from pallm.paths import cache_dir
from pallm.train.config import ModelConfig


class OfflineSpeechConfig(PretrainedConfig):
    """The decoder's config plus how audio enters it."""

    model_type = "pallm_offline_speech"
    sub_configs: ClassVar[dict[str, type]] = {"text_config": AutoConfig}

    def __init__(
        self, text_config: PretrainedConfig | dict | None = None, encoder: str = "base", encoder_dim: int = 512,
        stack: int = 4, audio_token_index: int = 0, pool: int = 1, projector_norm: bool = False,
        summary_tokens: int = 0, speaker_norm: bool = False, **kwargs: Any,
    ) -> None:  # fmt: skip
        # pool, projector_norm, summary_tokens and speaker_norm default to what models saved before them were:
        # none of them.
        if isinstance(text_config, dict):
            text_config = CONFIG_MAPPING[text_config.get("model_type", "llama")](**text_config)
        self.text_config = text_config if text_config is not None else CONFIG_MAPPING["llama"]()
        self.encoder, self.encoder_dim, self.stack = encoder, encoder_dim, stack
        self.pool, self.projector_norm, self.summary_tokens = pool, projector_norm, summary_tokens
        self.speaker_norm = speaker_norm
        self.audio_token_index = audio_token_index
        super().__init__(**kwargs)


class Projector(nn.Module):
    """`stack` consecutive (pooled) encoder frames -> one decoder embedding (two layers); with `norm`, each frame
    is layer-normalised first, so the projector sees inputs of one scale whatever the encoder's (Ultravox puts an
    RMSNorm there).

    With `summary` > 0, the clip's mean and standard deviation over time of the frames (what a linear probe of
    the encoder reads emotion from) also become `summary` embeddings, placed after the clip's frame tokens: the
    decoder gets the utterance-level voice in a few tokens, where the frame tokens each see 80-160 ms of it.
    """

    def __init__(self, encoder_dim: int, stack: int, hidden: int, norm: bool = False, summary: int = 0) -> None:
        super().__init__()
        self.stack, self.summary_tokens = stack, summary
        self.norm = nn.LayerNorm(encoder_dim) if norm else nn.Identity()
        self.net = nn.Sequential(nn.Linear(encoder_dim * stack, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        if summary:
            # The statistics are standardised per feature with the training clips' mean and spread (a linear
            # probe's scaler, `fit_summary_scaler`): Whisper's frames have a few dimensions of far larger scale
            # than the rest, which would otherwise drown them.
            self.register_buffer("stats_shift", torch.zeros(2 * encoder_dim))
            self.register_buffer("stats_scale", torch.ones(2 * encoder_dim))
            self.summary = nn.Sequential(
                nn.Linear(2 * encoder_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden * summary)
            )

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(b, t, d) frames and their (b, t) mask -> (b, t / stack + summary, hidden): the frame tokens, then the
        summary tokens."""
        b, t, d = frames.shape
        tokens = self.net(self.norm(frames).reshape(b, t // self.stack, d * self.stack))
        if not self.summary_tokens:
            return tokens
        stats = (clip_statistics(frames, mask) - self.stats_shift) / self.stats_scale
        summary = self.summary(stats).reshape(b, self.summary_tokens, -1)
        return torch.cat([tokens, summary], dim=1)


def clip_statistics(frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(b, t, d) frames and their (b, t) mask -> (b, 2d): each clip's mean and standard deviation over time."""
    b, t, _ = frames.shape
    weights = (mask if mask is not None else frames.new_ones(b, t)).to(frames.dtype)[..., None]
    count = weights.sum(dim=1).clamp(min=1)
    mean = (frames * weights).sum(dim=1) / count
    std = (((frames - mean[:, None]) ** 2 * weights).sum(dim=1) / count).sqrt()
    return torch.cat([mean, std], dim=-1)


class OfflineSpeechLM(PreTrainedModel, GenerationMixin):
    """Projector + decoder; the encoder stays outside (in the processor), frozen and cached."""

    config_class = OfflineSpeechConfig
    base_model_prefix = "language_model"
    _supports_sdpa = True
    supports_gradient_checkpointing = True  # the decoder's layers checkpoint; the projector is small

    def __init__(self, config: OfflineSpeechConfig) -> None:
        super().__init__(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.projector = Projector(config.encoder_dim, config.stack, config.text_config.hidden_size,
                                   config.projector_norm, config.summary_tokens)  # fmt: skip
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def embed(
        self, input_ids: torch.Tensor, input_features: torch.Tensor | None, feature_attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Token embeddings with the projected audio in the audio tokens' places."""
        embeds = self.get_input_embeddings()(input_ids)
        if input_features is None:
            return embeds
        audio = self.projector(input_features.to(embeds.dtype), feature_attention_mask)
        b = input_features.size(0)
        valid = feature_attention_mask.reshape(b, -1, self.config.stack).any(dim=-1)
        # Each clip's tokens in text order: its frame tokens (a prefix of the padded ones), then its summary.
        valid = torch.cat([valid, valid.new_ones(b, self.config.summary_tokens)], dim=1)
        slots = input_ids == self.config.audio_token_index
        if int(slots.sum()) != int(valid.sum()):
            raise ValueError(f"{int(slots.sum())} audio tokens in the text but {int(valid.sum())} audio embeddings")
        # Under autocast the projector computes in bfloat16 while the embedding table stays float32.
        return embeds.masked_scatter(slots[..., None], audio[valid].to(embeds.dtype))

    def forward(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None, feature_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None, logits_to_keep: int | torch.Tensor = 0, **kwargs: Any,
    ) -> Any:  # fmt: skip
        """The decoder's forward on the text and audio embeddings; `logits_to_keep` (the decoder's): the positions
        the LM head runs over, the last N or these indices (0: all)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, input_features, feature_attention_mask)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   logits_to_keep=logits_to_keep, **kwargs)  # fmt: skip

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None, feature_attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:  # fmt: skip
        """Like a decoder-only `generate`: the prompt's ids followed by the new ones."""
        embeds = self.embed(input_ids, input_features, feature_attention_mask)
        new = self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)


AutoConfig.register(OfflineSpeechConfig.model_type, OfflineSpeechConfig, exist_ok=True)
# TRL rebuilds a reference model from the checkpoint's folder through the auto classes.
AutoModelForCausalLM.register(OfflineSpeechConfig, OfflineSpeechLM, exist_ok=True)


class OfflineSpeechProcessor(ProcessorMixin):
    """The tokenizer and the frozen encoder: text with one `<|AUDIO|>` per clip in, ids with the placeholder
    expanded and the clips' encoder frames out."""

    attributes: ClassVar[list[str]] = ["tokenizer"]
    tokenizer_class = "AutoTokenizer"

    def __init__(
        self, tokenizer: Any, chat_template: str | None = None, encoder: WhisperEncoder | None = None, stack: int = 4,
        pool: int = 1, summary_tokens: int = 0, speaker_norm: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(tokenizer, chat_template=chat_template)
        self.encoder, self.stack, self.pool, self.summary_tokens = encoder, stack, pool, summary_tokens
        # With `speaker_norm`, the frames are standardised by their speaker's statistics (`fit_speakers`).
        self.speaker_norm = speaker_norm
        self.speakers: SpeakerNorm | None = None

    def frames(self, audio: list[np.ndarray]) -> list[np.ndarray]:
        """Each clip's encoder frames as the projector receives them: standardised per speaker where the model
        does that, then pooled."""
        if self.encoder is None:
            raise RuntimeError("this processor has no encoder (loaded without one)")
        raw = self.encoder(audio)
        if self.speaker_norm:
            if self.speakers is None:
                raise RuntimeError("this model standardises frames per speaker: fit_speakers on the clips first")
            raw = [self.speakers.apply(self.encoder.key(a), f) for a, f in zip(audio, raw, strict=True)]
        return [pool_frames(f, self.pool) for f in raw]

    def __call__(
        self, text: list[str], audio: list[np.ndarray], sampling_rate: int = SAMPLE_RATE, padding: bool = True,
        return_tensors: str = "pt", **kwargs: Any,
    ) -> BatchFeature:  # fmt: skip
        if sampling_rate != SAMPLE_RATE:
            raise ValueError(f"the encoder takes {SAMPLE_RATE} Hz audio, not {sampling_rate} Hz")
        if len(text) != len(audio) or any(t.count("<|AUDIO|>") != 1 for t in text):
            raise ValueError("each text needs exactly one <|AUDIO|> and one clip")
        frames = self.frames(audio)
        tokens = [math.ceil(len(f) / self.stack) for f in frames]
        slots = [n + self.summary_tokens for n in tokens]
        expanded = [t.replace("<|AUDIO|>", "<|AUDIO|>" * n) for t, n in zip(text, slots, strict=True)]
        enc = self.tokenizer(expanded, padding=padding, return_tensors=return_tensors, **kwargs)
        width = max(tokens) * self.stack
        features = np.zeros((len(frames), width, frames[0].shape[1]), np.float32)
        mask = np.zeros((len(frames), width), np.int64)
        for k, f in enumerate(frames):
            features[k, : len(f)] = f
            mask[k, : len(f)] = 1  # a last, partly filled token still counts: any of its frames marks it
        enc["input_features"] = torch.from_numpy(features)
        enc["feature_attention_mask"] = torch.from_numpy(mask)
        return enc

    def save_pretrained(self, save_directory: str | Path, **_: Any) -> list[str]:
        """The tokenizer and the chat template; the encoder is named by the model's config."""
        return self.tokenizer.save_pretrained(save_directory)


def fit_summary_scaler(speech: SpeechLM, audio: list[np.ndarray], batch: int = 64) -> bool:
    """Set the summary head's standardisation to the mean and spread over `audio` (the training clips) of each
    clip's statistics; False when the model has no summary tokens."""
    projectors = [m for m in speech.model.modules() if isinstance(m, Projector)]  # peft keeps a copy
    if not projectors or not projectors[0].summary_tokens:
        return False
    proc = speech.processor
    stats = torch.cat([
        clip_statistics(torch.from_numpy(f)[None])
        for start in range(0, len(audio), batch) for f in proc.frames(audio[start : start + batch])
    ])  # fmt: skip
    for p in projectors:
        p.stats_shift.copy_(stats.mean(dim=0))
        p.stats_scale.copy_(stats.std(dim=0).clamp(min=1e-4))
    return True


def fit_speakers(speech: SpeechLM, clips: Iterable[tuple[str, np.ndarray]]) -> bool:
    """Give the processor every speaker's frame statistics over `clips` (`(speaker, samples)` pairs: all the clips
    the model will hear, no labels needed); False when the model does not standardise per speaker."""
    proc = speech.processor
    if not getattr(proc, "speaker_norm", False):
        return False
    proc.speakers = fit_speaker_norm(proc.encoder, proc.encoder.key, clips)
    return True


def pool_frames(frames: np.ndarray, pool: int) -> np.ndarray:
    """Mean of every `pool` consecutive frames (a last, shorter group averages what it has)."""
    if pool == 1:
        return frames
    n = math.ceil(len(frames) / pool)
    padded = np.zeros((n * pool, frames.shape[1]), np.float32)
    padded[: len(frames)] = frames
    counts = np.minimum(pool, len(frames) - np.arange(n) * pool)[:, None]
    return padded.reshape(n, pool, -1).sum(axis=1) / counts


def _decoder(source: str | None) -> Any:
    """The pretrained decoder: a GGUF file, a transformers folder or hub name; unset: the packaged SmolLM2."""
    if source is None or source.endswith(".gguf"):
        from pallm.teacher.local import packaged_gguf

        gguf = Path(source) if source else packaged_gguf()
        return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return AutoModelForCausalLM.from_pretrained(source)


def frame_encoder(cfg: ModelConfig, encoder: str | None = None) -> WhisperEncoder:
    """The frozen encoder of the backbone (`encoder`, else the config's) with its frame cache: the model's processor
    and the encoder probe read the same frames."""
    name = encoder or cfg.encoder
    cache = Path(cfg.encoder_cache) if cfg.encoder_cache else cache_dir("whisper-frames")
    return WhisperEncoder(name, cache_dir=cache / name.replace("/", "_"))


def build(cfg: ModelConfig, checkpoint: Path | None = None, seed: int = 0) -> SpeechLM:
    """The offline backbone from `checkpoint` (a saved stage), else from its pretrained parts."""
    dtype = dtype_for(cfg)
    if checkpoint is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = OfflineSpeechLM.from_pretrained(checkpoint, dtype=dtype)
        encoder = frame_encoder(cfg, model.config.encoder)
    else:
        tokenizer = offline_tokenizer(cfg.tokenizer)
        decoder = _decoder(cfg.source)
        decoder.resize_token_embeddings(len(tokenizer))
        encoder = frame_encoder(cfg)
        width = encoder([np.zeros(SAMPLE_RATE, np.float32)])[0].shape[1]
        config = OfflineSpeechConfig(
            text_config=decoder.config, encoder=cfg.encoder, encoder_dim=width, stack=cfg.stack, pool=cfg.pool,
            projector_norm=cfg.projector_norm, summary_tokens=cfg.summary_tokens, speaker_norm=cfg.speaker_norm,
            audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
        )  # fmt: skip
        torch.manual_seed(seed)
        model = OfflineSpeechLM(config)
        model.language_model = decoder
        model.to(dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = OfflineSpeechProcessor(tokenizer, CHAT_TEMPLATE, encoder=encoder, stack=model.config.stack,
                                       pool=model.config.pool, summary_tokens=model.config.summary_tokens,
                                       speaker_norm=getattr(model.config, "speaker_norm", False))  # fmt: skip
    if cfg.lora is not None:
        model = with_lora(model, cfg.lora, projector="projector")
    return SpeechLM(model=model, processor=processor, family="offline")
