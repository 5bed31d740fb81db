"""Decode audio files to float32 at 16 kHz: libsndfile first, ffmpeg for everything else.

libsndfile (through soundfile) reads WAV of any sample width, FLAC, OGG and MP3 without a
subprocess; ffmpeg covers the rest (M4A, WMA, odd WAV variants). Resampling uses soxr (HQ).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class DecodeError(Exception):
    """The file could not be decoded by any backend; the message says why."""


class TooLong(DecodeError):
    """The file is longer than the limit; raised before its samples are read."""


@dataclass(frozen=True)
class SourceInfo:
    """What the source file is, before any conversion."""

    sample_rate: int
    channels: int
    frames: int
    format: str  # container/sample format, e.g. "WAV/PCM_24", "FLAC/PCM_16", "ffmpeg:mp3"
    backend: str  # "soundfile" or "ffmpeg"

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def decode(
    path: Path, max_duration_s: float = float("inf"), channel: int | None = None
) -> tuple[SourceInfo, np.ndarray]:
    """Probe a file and read it as mono float32 at the source rate: one channel, or all averaged.

    libsndfile formats are probed and read in one open; multichannel files are read in blocks and
    reduced to mono as they come, so only one channel's worth of samples is ever held. A file whose
    header says it is longer than `max_duration_s` raises TooLong before any sample is read.
    """
    try:
        with sf.SoundFile(str(path)) as f:
            info = _sf_info(f)
            _check_length(info, max_duration_s)
            _check_channel(info, channel)
            if info.channels == 1:
                return info, _read_float32(f, f.frames)[:, 0]
            block = info.sample_rate * 10
            parts = [to_mono(_read_float32(f, block), channel) for _ in range(0, max(info.frames, 1), block)]
            return info, np.concatenate(parts) if parts else np.zeros(0, np.float32)
    except (sf.LibsndfileError, RuntimeError) as e:
        info = _ffprobe(path, f"libsndfile: {e}")
    _check_length(info, max_duration_s)
    _check_channel(info, channel)
    return info, to_mono(_ffmpeg_read(path, info, max_duration_s), channel)


def _check_channel(info: SourceInfo, channel: int | None) -> None:
    if channel is not None and not 0 <= channel < info.channels:
        raise DecodeError(f"channel {channel} requested but the file has {info.channels}")


def environment() -> dict[str, str]:
    """The decoders this machine has: part of the audio stage's fingerprint, so installing ffmpeg
    (or a new libsndfile) re-runs chunks whose items it may now decode."""
    return {
        "libsndfile": sf.__libsndfile_version__,
        "soxr": soxr.__version__,
        "ffmpeg": "yes" if shutil.which("ffmpeg") and shutil.which("ffprobe") else "no",
    }


def _check_length(info: SourceInfo, max_duration_s: float) -> None:
    if info.duration_s > max_duration_s:
        raise TooLong(f"too long: {info.duration_s:.1f} s > max_duration_s {max_duration_s:g} s")


# libsndfile's own integer -> float conversion is slow; reading integers and scaling in numpy is
# over twice as fast and gives the same values (x / 2**15 for 16-bit, x / 2**31 for 24/32-bit).
_INT_READS = {"PCM_16": ("int16", 2.0**-15), "PCM_24": ("int32", 2.0**-31), "PCM_32": ("int32", 2.0**-31)}


def _read_float32(f: sf.SoundFile, frames: int) -> np.ndarray:
    dtype_scale = _INT_READS.get(f.subtype)
    if dtype_scale is None:
        return f.read(frames, dtype="float32", always_2d=True)
    dtype, scale = dtype_scale
    data = f.read(frames, dtype=dtype, always_2d=True)
    out = data.astype(np.float32)
    out *= np.float32(scale)
    return out


def _sf_info(f: sf.SoundFile) -> SourceInfo:
    if f.samplerate <= 0 or f.channels <= 0:
        raise RuntimeError(f"bad header (rate {f.samplerate}, channels {f.channels})")
    return SourceInfo(f.samplerate, f.channels, f.frames, f"{f.format}/{f.subtype}", "soundfile")


def _ffprobe(path: Path, sf_error: str) -> SourceInfo:
    if shutil.which("ffprobe") is None:
        raise DecodeError(f"{sf_error}; ffmpeg is not installed (apt-get install ffmpeg) to try further")
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
           "stream=sample_rate,channels,codec_name,duration", "-of", "json", str(path)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        streams = json.loads(proc.stdout or "{}").get("streams") if proc.returncode == 0 else None
        if not streams:
            why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no audio stream"
            raise DecodeError(f"not a readable audio file ({sf_error}; ffmpeg: {why})")
        s = streams[0]
        rate, channels = int(s.get("sample_rate", 0)), int(s.get("channels", 0))
        duration = float(s["duration"]) if str(s.get("duration", "")).replace(".", "", 1).isdigit() else 0.0
    except subprocess.TimeoutExpired:
        raise DecodeError(f"not a readable audio file ({sf_error}; ffprobe timed out)") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise DecodeError(f"not a readable audio file ({sf_error}; ffprobe said something odd: {e})") from None
    if rate <= 0 or channels <= 0:
        raise DecodeError(f"not a readable audio file ({sf_error}; ffmpeg: rate {rate}, channels {channels})")
    return SourceInfo(rate, channels, int(duration * rate), f"ffmpeg:{s.get('codec_name', '?')}", "ffmpeg")


def _ffmpeg_read(path: Path, info: SourceInfo, max_duration_s: float) -> np.ndarray:
    # -t stops at just past the limit, so a file whose header gave no duration cannot fill memory.
    limit = ["-t", f"{max_duration_s + 1:.3f}"] if max_duration_s != float("inf") else []
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", *limit,
           "-f", "f32le", "-acodec", "pcm_f32le", "-"]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise DecodeError("ffmpeg took over 600 s to decode") from None
    if proc.returncode != 0:
        raise DecodeError(f"ffmpeg could not decode: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    usable = len(proc.stdout) // (4 * info.channels) * 4 * info.channels
    return np.frombuffer(proc.stdout[:usable], dtype="<f4").reshape(-1, info.channels)


def to_mono(frames: np.ndarray, channel: int | None) -> np.ndarray:
    """One channel of a (frames, channels) array, or the mean of all channels when `channel` is None."""
    if channel is not None:
        return np.ascontiguousarray(frames[:, channel])
    if frames.shape[1] == 1:
        return frames[:, 0]
    return frames.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample a mono float32 signal with soxr (high quality, 20-bit); a no-op when the rates match."""
    if rate_in == rate_out:
        return x
    return soxr.resample(x, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)
