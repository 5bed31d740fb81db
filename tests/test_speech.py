"""The speech stage on real Whisper weights (the packaged tiny.en and base) and real RAVDESS speech."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pallm.config import SpeechConfig
from pallm.corpora.base import ItemError
from pallm.speech import models
from pallm.speech.models import ModelError, check_ct2_folder, resolve_asr_model
from pallm.speech.stage import NO_SPEECH, SpeechStep, speech_stage
from pallm.speech.transcribe import Transcriber, load_transcriber
from pallm.speech.wer import normalize, word_error_rate

pytest.importorskip("whisperx", reason="the speech extra is not installed: pip install -e '.[asr]'")

STATEMENTS = {"01": "kids are talking by the door", "02": "dogs are sitting by the door"}


def clips(ravdess16k: Path, actors: tuple[int, ...], per_actor: int) -> list[Path]:
    """Evenly spread clips of the given actors (every emotion, both statements)."""
    out = []
    for a in actors:
        files = sorted((ravdess16k / f"Actor_{a:02d}").glob("*.wav"))
        out += files[:: max(1, len(files) // per_actor)][:per_actor]
    return out


def reference(path: Path) -> str:
    return STATEMENTS[path.stem.split("-")[4]]


def read(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float32")[0]


def wav_row(audio: np.ndarray, ref: str | None = None) -> dict:
    buf = io.BytesIO()
    sf.write(buf, audio, 16_000, format="WAV", subtype="PCM_16")
    return {"audio": {"bytes": buf.getvalue(), "path": "x.wav"}, "transcript_ref": ref, "flags": []}


@pytest.fixture(scope="module")
def tiny() -> Transcriber:
    return load_transcriber("tiny.en", SpeechConfig(threads=os.cpu_count() or 1))


def test_packaged_names_resolve_to_installed_weights() -> None:
    for name in ("tiny.en", "base"):
        folder = Path(resolve_asr_model(name))
        assert check_ct2_folder(folder) == folder
    assert (Path(resolve_asr_model("base")) / "model.bin").stat().st_size > 100e6  # both parts joined
    assert resolve_asr_model("large-v3") == "large-v3"  # not packaged: a hub name for faster-whisper


def test_an_incomplete_model_folder_names_the_missing_file(tmp_path: Path) -> None:
    folder = Path(resolve_asr_model("tiny.en"))
    copy = tmp_path / "tiny"
    copy.mkdir()
    for name in ("model.bin", "config.json", "vocabulary.txt"):
        (copy / name).symlink_to(folder / name)
    with pytest.raises(ModelError, match=r"incomplete: tokenizer\.json is missing"):
        resolve_asr_model(str(copy))
    with pytest.raises(ModelError, match="does not exist"):
        resolve_asr_model(str(tmp_path / "nowhere"))
    assert models.looks_like_path("./tiny") and not models.looks_like_path("Systran/faster-whisper-base")


def test_word_error_rate_normalises_case_punctuation_and_emphasis_marks() -> None:
    assert normalize("Kids are *talking* by the DOOR!") == "kids are talking by the door"
    assert word_error_rate("Kids are talking by the door.", "kids are talking by the door") == 0.0
    assert word_error_rate("kids are talking by the door", "kids are talking about the door") == pytest.approx(1 / 6)
    assert word_error_rate("kids are talking", "") == 1.0 and word_error_rate(None, "anything") is None


def test_tiny_transcribes_real_speech_with_ordered_words_inside_the_clip(tiny: Transcriber, ravdess16k: Path) -> None:
    paths = clips(ravdess16k, (1, 2), 6)
    audio = [read(p) for p in paths]
    result = tiny.transcribe(audio)
    wers = [word_error_rate(reference(p), t.text) for p, t in zip(paths, result, strict=True)]
    assert np.mean(wers) <= 0.15, list(zip([p.name for p in paths], [t.text for t in result], strict=True))
    for t, x in zip(result, audio, strict=True):
        assert t.speech_found and len(t.words) >= 5
        starts = [w.start for w in t.words]
        assert starts == sorted(starts)
        assert all(0 <= w.start <= w.end <= len(x) / 16_000 for w in t.words)
        assert all(0 <= w.probability <= 1 for w in t.words)
        assert " ".join(w.word for w in t.words) == t.text
        # the words sit on the speech, not on the second of silence RAVDESS clips open with
        assert t.words[0].start > 0.3 and t.words[-1].end < len(x) / 16_000 - 0.2


def test_decoder_layout_defaults_follow_the_device() -> None:
    assert SpeechConfig(threads=4).decoding() == (4, 1, 1)  # CPU: one single-threaded decoder per thread
    assert SpeechConfig(threads=4, decoders=2).decoding() == (2, 2, 1)
    assert SpeechConfig(threads=3, decoders=2, batch_size=4).decoding() == (2, 1, 4)
    assert SpeechConfig(threads=4, device="cuda").decoding() == (1, 4, 8)  # GPU: one decoder, batches


def test_how_many_threads_decode_does_not_change_the_stage_fingerprint() -> None:
    from pallm.config import BuildConfig

    one = SpeechConfig(threads=1)
    key = speech_stage("tiny.en", one).fingerprint()
    same = [SpeechConfig(threads=16), SpeechConfig(threads=4, decoders=2, batch_size=8, offline=True)]
    assert {speech_stage("tiny.en", c).fingerprint() for c in same} == {key}
    assert BuildConfig(speech=one).fingerprint() == BuildConfig(speech=same[1]).fingerprint()
    for changed in (SpeechConfig(threads=1, beam_size=1), SpeechConfig(threads=1, compute_type="float32")):
        assert speech_stage("tiny.en", changed).fingerprint() != key
    assert speech_stage("base", one).fingerprint() != key


def test_concurrent_decoders_and_batches_give_the_same_words_as_one_clip_at_a_time(ravdess16k: Path) -> None:
    audio = [read(p) for p in clips(ravdess16k, (3, 9), 4)]
    concurrent = load_transcriber("tiny.en", SpeechConfig(threads=2, decoders=2))
    batched = load_transcriber("tiny.en", SpeechConfig(threads=2, decoders=1, batch_size=8))
    by_two = concurrent.transcribe(audio)  # pieces finish out of order on two decoders
    by_eight = batched.transcribe(audio)
    alone = [batched.transcribe([x])[0] for x in audio]
    assert len({t.text for t in alone}) > 1  # both sentences, so a mix-up of clips would show
    for result in (by_two, by_eight):
        assert [t.text for t in result] == [t.text for t in alone]
        for a, b in zip(result, alone, strict=True):
            assert [w.start for w in a.words] == pytest.approx([w.start for w in b.words], abs=0.02)


def test_no_speech_keeps_an_empty_transcript_and_a_flag(tiny: Transcriber, ravdess16k: Path) -> None:
    step = SpeechStep("tiny.en", tiny.config)
    step._transcriber = tiny
    quiet = np.random.default_rng(1).normal(0, 1e-4, 32_000).astype(np.float32)  # room tone, no voice
    speech = read(clips(ravdess16k, (4,), 1)[0])
    out = step([wav_row(quiet, "kids are talking by the door"), wav_row(speech)])
    assert out[0]["transcript"] == "" and out[0]["words"] == [] and NO_SPEECH in out[0]["flags"]
    assert out[0]["asr_wer"] == 1.0 and out[0]["asr_confidence"] is None
    assert out[1]["transcript"] and NO_SPEECH not in out[1]["flags"] and out[1]["asr_wer"] is None
    assert out[1]["asr_model"] == "tiny.en" and out[1]["word_timing"] == "whisper"


def test_a_file_whose_decoding_fails_is_quarantined_and_the_rest_proceed(
    tiny: Transcriber, ravdess16k: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A decoder crash cannot be provoked with real audio on demand: fail it for one marked clip.
    paths = clips(ravdess16k, (5,), 3)
    poisoned = len(read(paths[1]))
    real_decode = Transcriber._decode

    def decode(self: Transcriber, windows: list[np.ndarray]) -> list:
        if any(len(w) == poisoned for w in windows):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_decode(self, windows)

    step = SpeechStep("tiny.en", tiny.config)
    step._transcriber = tiny
    monkeypatch.setattr(tiny, "speech_pieces", lambda a: [(0.0, len(a) / 16_000)])  # the piece is the whole clip
    monkeypatch.setattr(Transcriber, "_decode", decode)
    out = step([wav_row(read(p), reference(p)) for p in paths])
    assert isinstance(out[1], ItemError) and "ASR failed: RuntimeError: CUDA out of memory" in str(out[1])
    assert [isinstance(o, dict) and o["asr_wer"] is not None for o in (out[0], out[2])] == [True, True]


def test_whisper_base_meets_the_wer_target_on_real_ravdess(ravdess16k: Path) -> None:
    paths = clips(ravdess16k, (7, 8, 11, 12), 6)
    base = load_transcriber("base", SpeechConfig(threads=os.cpu_count() or 1))
    result = base.transcribe([read(p) for p in paths])
    wers = [word_error_rate(reference(p), t.text) for p, t in zip(paths, result, strict=True)]
    assert np.mean(wers) <= 0.10, [(p.name, t.text) for p, t in zip(paths, result, strict=True)]


def test_missing_aligner_or_diarizer_files_stop_the_build_before_any_work(tmp_path: Path) -> None:
    from pallm.config import BuildConfig, CorpusSpec
    from pallm.pipeline import build_stages

    aligner = tmp_path / "aligner"
    aligner.mkdir()
    (aligner / "config.json").write_text("{}")
    cfg = BuildConfig(asr="tiny.en", speech=SpeechConfig(align_model=str(aligner)))
    with pytest.raises(FileNotFoundError, match=r"preprocessor_config\.json"):
        build_stages(cfg)
    manifest = [CorpusSpec(name="manifest", path=tmp_path / "list.csv")]
    cfg = BuildConfig(asr="tiny.en", corpora=manifest, speech=SpeechConfig(diarize_model=str(tmp_path / "pipe")))
    with pytest.raises(FileNotFoundError, match=r"config\.yaml"):
        build_stages(cfg)
    synthetic = BuildConfig(asr="tiny.en", speech=SpeechConfig(diarize_model=str(tmp_path / "pipe")))
    assert [s.name for s in build_stages(synthetic)] == ["audio", "speech", "cues"]  # one speaker a file
