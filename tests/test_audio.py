"""The audio stage on every kind of input: conversions that must succeed, and items it must quarantine."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pallm.audio.levels import measure
from pallm.audio.stage import process_audio
from pallm.config import AudioConfig
from pallm.corpora.base import SOURCE_KEY, ItemError

SR = 16_000


def voice(seconds: float, rate: int, amp: float = 0.3, f0: float = 180.0) -> np.ndarray:
    """A voiced-like test signal: a harmonic tone with a slow amplitude envelope."""
    t = np.arange(int(seconds * rate)) / rate
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 2.0 * t)
    return (amp * env * x / np.max(np.abs(x))).astype(np.float32)


def row_for(path: Path, channel: int | None = None) -> dict:
    return {SOURCE_KEY: str(path), "audio_path": path.name, "channel": channel, "id": "t/" + path.stem}


def decoded(out: dict) -> tuple[np.ndarray, int, str]:
    info = sf.info(io.BytesIO(out["audio"]["bytes"]))
    data, rate = sf.read(io.BytesIO(out["audio"]["bytes"]), dtype="float32", always_2d=True)
    return data, rate, f"{info.format}/{info.subtype}/{info.channels}"


@pytest.mark.parametrize(
    ("subtype", "rate"),
    [
        ("PCM_16", 16_000),
        ("PCM_24", 48_000),
        ("PCM_32", 44_100),
        ("FLOAT", 22_050),
        ("PCM_U8", 8_000),
        ("PCM_16", 8_000),
    ],
)
def test_wav_of_any_width_and_rate_becomes_16k_mono_16bit(tmp_path: Path, subtype: str, rate: int) -> None:
    x = voice(1.0, rate)
    path = tmp_path / f"clip_{subtype}_{rate}.wav"
    sf.write(path, x, rate, subtype=subtype)
    out = process_audio(row_for(path), AudioConfig())
    data, out_rate, fmt = decoded(out)
    assert (out_rate, fmt) == (SR, "WAV/PCM_16/1")
    assert out["source_sample_rate"] == rate and out["source_channels"] == 1
    assert out["source_format"] == f"WAV/{subtype}"
    assert out["duration_s"] == pytest.approx(1.0, abs=0.002)
    # Loudness is kept, not normalised: the level of the output is the level of the input.
    assert out["level_rms_dbfs"] == pytest.approx(measure(x, rate).rms_dbfs, abs=0.3)
    assert measure(data[:, 0], SR).rms_dbfs == pytest.approx(out["level_rms_dbfs"], abs=0.3)


def test_quiet_and_loud_clips_keep_their_level_difference(tmp_path: Path) -> None:
    sf.write(tmp_path / "soft.wav", voice(1.0, SR, amp=0.03), SR)
    sf.write(tmp_path / "loud.wav", voice(1.0, SR, amp=0.6), SR)
    soft = process_audio(row_for(tmp_path / "soft.wav"), AudioConfig())
    loud = process_audio(row_for(tmp_path / "loud.wav"), AudioConfig())
    assert loud["level_rms_dbfs"] - soft["level_rms_dbfs"] == pytest.approx(26.0, abs=0.2)


def test_16k_mono_16bit_wav_is_stored_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "native.wav"
    sf.write(path, voice(0.5, SR), SR, subtype="PCM_16")
    assert process_audio(row_for(path), AudioConfig())["audio"]["bytes"] == path.read_bytes()


def test_stereo_is_downmixed_unless_a_channel_is_asked_for(tmp_path: Path) -> None:
    left, right = voice(1.0, 48_000, amp=0.4, f0=150), voice(1.0, 48_000, amp=0.05, f0=300)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 48_000, subtype="PCM_24")
    mixed = process_audio(row_for(path), AudioConfig())
    ch0 = process_audio(row_for(path, channel=0), AudioConfig())
    ch1 = process_audio(row_for(path, channel=1), AudioConfig())
    assert mixed["source_channels"] == 2 and decoded(mixed)[2] == "WAV/PCM_16/1"
    assert ch0["level_rms_dbfs"] == pytest.approx(measure(left, 48_000).rms_dbfs, abs=0.3)
    assert ch1["level_rms_dbfs"] == pytest.approx(measure(right, 48_000).rms_dbfs, abs=0.3)
    assert ch0["level_rms_dbfs"] > mixed["level_rms_dbfs"] > ch1["level_rms_dbfs"]


def test_flac_and_mp3_and_aac_decode(tmp_path: Path) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (apt-get install ffmpeg)")
    wav = tmp_path / "src.wav"
    sf.write(wav, voice(1.0, 44_100), 44_100)
    sf.write(tmp_path / "a.flac", voice(1.0, 44_100), 44_100)
    for name in ("a.mp3", "a.m4a"):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), str(tmp_path / name)], check=True)
    formats = {}
    for name in ("a.flac", "a.mp3", "a.m4a"):
        out = process_audio(row_for(tmp_path / name), AudioConfig())
        assert decoded(out)[1] == SR
        assert out["duration_s"] == pytest.approx(1.0, abs=0.08)  # codecs pad a few frames
        assert out["level_rms_dbfs"] == pytest.approx(measure(voice(1.0, 44_100), 44_100).rms_dbfs, abs=1.0)
        formats[name] = out["source_format"]
    assert formats["a.flac"] == "FLAC/PCM_16"
    assert formats["a.m4a"].startswith("ffmpeg:")  # libsndfile cannot read AAC: ffmpeg did


def test_real_48k_stereo_ravdess_originals(ravdess48k: Path) -> None:
    outs = [process_audio(row_for(p), AudioConfig()) for p in sorted(ravdess48k.rglob("*.wav"))]
    assert len(outs) == 6
    assert {o["source_sample_rate"] for o in outs} == {48_000}
    assert sorted(o["source_channels"] for o in outs) == [1, 1, 1, 2, 2, 2]
    for o in outs:
        data, rate, fmt = decoded(o)
        assert (rate, fmt) == (SR, "WAV/PCM_16/1")
        assert data.shape[0] == pytest.approx(o["duration_s"] * SR, abs=1)
        assert 2.5 < o["duration_s"] < 6.0


def test_paths_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    folder = tmp_path / "Überaus fröhlich" / "日本 語"
    folder.mkdir(parents=True)
    path = folder / "clip été 01.wav"
    sf.write(path, voice(0.5, 22_050), 22_050)
    assert process_audio(row_for(path), AudioConfig())["duration_s"] == pytest.approx(0.5, abs=0.002)


def write_bad(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated_header":
        buf = io.BytesIO()
        sf.write(buf, voice(0.5, SR), SR, format="WAV")
        path.write_bytes(buf.getvalue()[:30])
    elif kind == "text":
        path.write_text("this is not audio, it is a text file named .wav\n" * 20)
    elif kind == "silence":
        sf.write(path, np.zeros(SR * 2, dtype=np.float32), SR)
    elif kind == "short":
        sf.write(path, voice(0.05, SR), SR)
    elif kind == "long":
        # 20 minutes: small on disk at 8 kHz 8-bit, over the 10-minute default limit.
        sf.write(path, np.zeros(8_000 * 1200, dtype=np.float32) + 0.01, 8_000, subtype="PCM_U8")
    elif kind == "missing":
        pass
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("empty", "empty file (0 bytes)"),
        ("truncated_header", "not a readable audio file"),
        ("text", "not a readable audio file"),
        ("silence", "silent: loudest 20 ms frame at -200.0 dBFS"),
        ("short", "too short: 0.050 s"),
        ("long", "too long: 1200.0 s > max_duration_s 600 s"),
        ("missing", "file not found"),
    ],
)
def test_bad_inputs_are_rejected_with_a_reason(tmp_path: Path, kind: str, reason: str) -> None:
    path = write_bad(tmp_path, kind)
    with pytest.raises(ItemError) as err:
        process_audio(row_for(path), AudioConfig())
    assert reason in str(err.value)


def test_limits_are_configurable(tmp_path: Path) -> None:
    sf.write(tmp_path / "c.wav", voice(2.0, SR), SR)
    with pytest.raises(ItemError, match="too long"):
        process_audio(row_for(tmp_path / "c.wav"), AudioConfig(max_duration_s=1.0))
    with pytest.raises(ItemError, match="too short"):
        process_audio(row_for(tmp_path / "c.wav"), AudioConfig(min_duration_s=3.0))
