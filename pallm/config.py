"""Typed configuration at the edges: what a build is asked to do, from flags, a file or Prefect."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CorpusSpec(_Strict):
    """One corpus to ingest: adapter name, where it lives, adapter options."""

    name: str
    path: Path | None = None  # None: the adapter's default location (the synthetic corpus only)
    options: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> CorpusSpec:
        """Parse the CLI form `NAME=PATH` (or a bare `NAME` for corpora with a default location)."""
        name, sep, path = text.partition("=")
        return cls(name=name.strip(), path=Path(path).expanduser() if sep and path else None)


class AudioConfig(_Strict):
    """Audio stage limits. Items outside them are quarantined with the reason."""

    min_duration_s: float = 0.1
    max_duration_s: float = 600.0
    silence_dbfs: float = Field(-60.0, description="a clip whose loudest 20 ms frame is below this is silent")


class ShardConfig(_Strict):
    """How rows are grouped into chunks (the unit of work and of caching) and Parquet shards."""

    chunk_rows: int = Field(128, ge=1, description="utterances per chunk")
    max_shard_mb: float = Field(256.0, gt=0, description="a chunk's shard rolls over past this size")
    row_group_rows: int = Field(64, ge=1)


class SpeechConfig(_Strict):
    """How the speech stage transcribes, times words and (where asked) diarizes."""

    language: str | None = Field("en", description="spoken language; null: detect per 30 s window")
    device: str = "cpu"
    compute_type: str = Field("int8", description="CTranslate2 compute type: int8, float32, float16 (GPU), ...")
    threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, description="CPU threads for decoding")
    batch_size: int = Field(8, ge=1, description="speech pieces (of one or many clips) decoded together")
    beam_size: int = Field(5, ge=1)
    vad_onset: float = 0.5
    vad_offset: float = 0.363
    align_model: str | None = Field(
        None, description="wav2vec2 CTC aligner (hub name or folder); null: Whisper's timing"
    )
    diarize_model: str | None = Field(
        None, description="pyannote pipeline (config.yaml or hub name); null: no diarization"
    )
    min_speakers: int | None = Field(None, ge=1, description="diarization: at least this many speakers")
    max_speakers: int | None = Field(None, ge=1, description="diarization: at most this many speakers")
    hf_token_env: str = Field("HF_TOKEN", description="environment variable holding a hub token for gated models")
    offline: bool = Field(False, description="never fetch a model from the hub")


class BuildConfig(_Strict):
    """Everything a `build-dataset` run depends on."""

    name: str = ""  # default: the corpus names joined by "-"
    corpora: list[CorpusSpec] = Field(default_factory=lambda: [CorpusSpec(name="synthetic")])
    out: Path | None = None  # default: datasets/<name>
    asr: str = Field(
        "tiny.en", description="Whisper model: tiny.en, base (packaged), a CTranslate2 folder, a hub name, or none"
    )
    teacher: Literal["none"] = "none"
    limit: int | None = Field(None, ge=1, description="at most this many utterances per corpus")
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    speech: SpeechConfig = Field(default_factory=SpeechConfig)
    shards: ShardConfig = Field(default_factory=ShardConfig)
    cards_index: Path | None = Field(None, description="folder that keeps a copy of each card and an index")

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError("name may hold letters, digits, '-', '_' and '.' only")
        return v

    @model_validator(mode="after")
    def _default_name(self) -> BuildConfig:
        if not self.name:
            self.name = "-".join(c.name for c in self.corpora) or "dataset"
        if self.out is None:
            self.out = Path("datasets") / self.name
        return self

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> BuildConfig:
        """Read a YAML/JSON config file (optional) and apply non-None overrides on top."""
        data: dict[str, Any] = {}
        if path is not None:
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} does not exist")
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if not isinstance(data, dict):
                raise ValueError(f"config file {path} must hold a mapping, not {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)

    def fingerprint(self) -> str:
        """Hash of the settings that change the output; where things live and how many workers run are left out."""
        keep = self.model_dump(
            mode="json", exclude={"out": True, "workers": True, "cards_index": True, "speech": {"threads"}}
        )
        for c in keep["corpora"]:
            c.pop("path", None)
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
