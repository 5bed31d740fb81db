"""The audio stage: any source file -> 16 kHz mono 16-bit WAV bytes, with source facts and levels.

Loudness is a cue (a shout, a whisper), so it is measured and recorded, never normalised away.
"""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from pallm.audio.decode import DecodeError, SourceInfo, decode, environment, resample
from pallm.audio.levels import measure
from pallm.config import AudioConfig
from pallm.corpora.base import SOURCE_KEY, ItemError
from pallm.schema import SAMPLE_RATE
from pallm.stages import Stage, per_row

VERSION = "1"
WRITES = (
    "audio", "duration_s", "source_sample_rate", "source_channels", "source_format",
    "level_rms_dbfs", "level_peak_dbfs", "active_fraction",
)  # fmt: skip


def audio_stage(config: AudioConfig) -> Stage:
    """The audio stage bound to its limits."""
    return Stage(
        name="audio",
        version=VERSION,
        reads=(SOURCE_KEY, "audio_path", "channel"),
        writes=WRITES,
        process=per_row(partial(process_audio, config=config)),
        config=config,
        environment=environment(),
    )


def process_audio(row: dict[str, Any], config: AudioConfig) -> dict[str, Any]:
    """Decode, check and re-encode one row's audio; raises ItemError with the reason to quarantine."""
    path = Path(row[SOURCE_KEY])
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ItemError("file not found") from None
    except OSError as e:
        raise ItemError(f"unreadable: {e.strerror}") from None
    if size == 0:
        raise ItemError("empty file (0 bytes)")
    channel = row.get("channel")
    try:
        info, mono = decode(path, config.max_duration_s, channel)
        x = resample(mono, info.sample_rate, SAMPLE_RATE)
    except DecodeError as e:
        raise ItemError(str(e)) from None
    del mono
    duration = x.size / SAMPLE_RATE
    if duration < config.min_duration_s:
        raise ItemError(f"too short: {duration:.3f} s < min_duration_s {config.min_duration_s:g} s")
    if duration > config.max_duration_s:  # headers can lie (e.g. MP3 without a duration)
        raise ItemError(f"too long: {duration:.1f} s > max_duration_s {config.max_duration_s:g} s")
    levels = measure(x, SAMPLE_RATE)
    if levels.loudest_frame_dbfs < config.silence_dbfs:
        raise ItemError(
            f"silent: loudest 20 ms frame at {levels.loudest_frame_dbfs:.1f} dBFS "
            f"(silence_dbfs {config.silence_dbfs:g})"
        )
    return {
        "audio": {"bytes": _wav_bytes(path, info, channel, x), "path": Path(row["audio_path"]).name},
        "duration_s": duration,
        "source_sample_rate": info.sample_rate,
        "source_channels": info.channels,
        "source_format": info.format,
        "level_rms_dbfs": levels.rms_dbfs,
        "level_peak_dbfs": levels.peak_dbfs,
        "active_fraction": levels.active_fraction,
    }


def _wav_bytes(path: Path, info: SourceInfo, channel: int | None, x: np.ndarray) -> bytes:
    # A source that already is 16 kHz mono 16-bit WAV is stored byte for byte: no re-quantisation.
    if info.format == "WAV/PCM_16" and info.sample_rate == SAMPLE_RATE and info.channels == 1 and channel is None:
        return path.read_bytes()
    return encode_wav(x)


def encode_wav(x: np.ndarray) -> bytes:
    """16 kHz mono float samples as 16-bit WAV bytes (the dataset's audio format)."""
    buf = io.BytesIO()
    sf.write(buf, x, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()
