"""The synthetic demo corpus: real audio, deterministic, atomic, and prosody that really follows the emotion."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pallm.corpora import get_adapter
from pallm.corpora import synthetic as syn
from pallm.corpora.base import SOURCE_KEY, CorpusError, Quarantined
from pallm.schema import UTTERANCE_COLUMNS

NO_ESPEAK = "espeak-ng not installed (apt-get install espeak-ng)"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason=NO_ESPEAK)

SMALL = syn.SyntheticOptions(
    voices=[syn.Voice(espeak="en-us+f3", gender="female"), syn.Voice(espeak="en-us+m3", gender="male")],
    emotions=["happy", "sad"],
    sentences=["The box is on the table."],
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default corpus, synthesised once for the module."""
    if shutil.which("espeak-ng") is None:
        pytest.skip(NO_ESPEAK)
    d = tmp_path_factory.mktemp("syn") / "corpus"
    syn.synthesize(d, syn.SyntheticOptions())
    return d


def _tree(d: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (inode, mtime_ns) of every file under d."""
    return {p.relative_to(d).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}


def _hashes(d: Path) -> dict[str, str]:
    files = (p for p in d.rglob("*") if p.is_file())
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _active(path: Path) -> tuple[np.ndarray, int]:
    """The samples between the first and last one above -40 dBFS (espeak pads with silence)."""
    x, sr = sf.read(path, dtype="float64")
    idx = np.nonzero(np.abs(x) > 0.01)[0]
    return x[idx[0] : idx[-1] + 1], sr


def _rms_db(path: Path) -> float:
    x, _ = _active(path)
    return float(20 * np.log10(np.sqrt(np.mean(x**2))))


def _duration(path: Path) -> float:
    x, sr = _active(path)
    return len(x) / sr


def _median_f0(path: Path) -> float:
    """Median F0 by frame autocorrelation over voiced frames (40 ms frames, 60-500 Hz)."""
    x, sr = _active(path)
    n, lo, hi = int(0.04 * sr), int(sr / 500), int(sr / 60)
    f0 = []
    for i in range(0, len(x) - n, n // 2):
        f = x[i : i + n] - x[i : i + n].mean()
        if np.sqrt(np.mean(f**2)) < 0.02:
            continue
        spec = np.fft.rfft(f, 2 * n)
        ac = np.fft.irfft(spec * np.conj(spec))[:n]
        k = lo + int(np.argmax(ac[lo:hi]))
        if ac[k] > 0.5 * ac[0]:
            f0.append(sr / k)
    assert len(f0) >= 5, f"too few voiced frames in {path.name}"
    return float(np.median(f0))


def _clip(d: Path, voice: syn.Voice, emotion: str, n: int) -> Path:
    return d / voice.speaker / f"{voice.speaker}_{emotion}_{n:02d}.wav"


def test_files_are_real_audio_one_per_voice_emotion_sentence(corpus: Path) -> None:
    opts = syn.SyntheticOptions()
    wavs = sorted(corpus.rglob("*.wav"))
    assert len(wavs) == len(opts.voices) * len(opts.emotions) * len(opts.sentences) == 144
    expected = {
        _clip(corpus, v, e, n) for v in opts.voices for e in opts.emotions for n in range(1, len(opts.sentences) + 1)
    }
    assert set(wavs) == expected
    for w in wavs:
        info = sf.info(w)
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert 0.8 < info.duration < 6.0, w.name
        x, _ = sf.read(w)
        assert np.abs(x).max() > 0.1, f"{w.name} is (nearly) silent"
        assert np.abs(x).max() < 1.0, f"{w.name} clips"


def test_metadata_and_marker_describe_every_clip(corpus: Path) -> None:
    with (corpus / syn.METADATA).open(encoding="utf-8", newline="") as f:
        meta = list(csv.DictReader(f))
    assert len(meta) == 144
    assert {m["path"] for m in meta} == {p.relative_to(corpus).as_posix() for p in corpus.rglob("*.wav")}
    for m in meta:
        assert m["path"] == f"{m['speaker']}/{m['id']}.wav"
        assert m["id"] == f"{m['speaker']}_{m['emotion']}_{int(m['sentence']):02d}"
        assert m["text"] == syn.DEFAULT_SENTENCES[int(m["sentence"]) - 1]
    marker = json.loads((corpus / syn.MARKER).read_text())
    assert marker["version"] == syn.GENERATOR_VERSION
    assert marker["parameters"] == syn.parameters(syn.SyntheticOptions())
    assert set(marker["files"]) == {m["path"] for m in meta} | {syn.METADATA}


def test_voices_sound_different_and_gender_matches_pitch(corpus: Path) -> None:
    opts = syn.SyntheticOptions()
    for e in opts.emotions:
        for n in range(1, 5):
            digests = {hashlib.sha256(_clip(corpus, v, e, n).read_bytes()).hexdigest() for v in opts.voices}
            assert len(digests) == len(opts.voices), f"two voices render {e} {n} identically"
    f0 = {v: np.mean([_median_f0(_clip(corpus, v, "neutral", n)) for n in range(1, 5)]) for v in opts.voices}
    female = [f for v, f in f0.items() if v.gender == "female"]
    male = [f for v, f in f0.items() if v.gender == "male"]
    assert female and male
    assert min(female) > 150 > max(male), f0


def test_prosody_follows_the_emotion(corpus: Path) -> None:
    opts = syn.SyntheticOptions()
    for v in opts.voices:
        for n in range(1, len(opts.sentences) + 1):
            rms = {e: _rms_db(_clip(corpus, v, e, n)) for e in opts.emotions}
            dur = {e: _duration(_clip(corpus, v, e, n)) for e in opts.emotions}
            where = f"{v.speaker} sentence {n}: rms {rms} dur {dur}"
            assert min(rms["angry"], rms["happy"]) > max(rms["sad"], rms["calm"]) + 2, where
            assert rms["angry"] > rms["neutral"] > rms["sad"], where
            assert dur["sad"] > dur["neutral"] > dur["happy"], where
            assert dur["sad"] > 1.3 * max(dur["happy"], dur["angry"], dur["fearful"]), where
            assert dur["calm"] > dur["neutral"], where
        f0 = {e: np.mean([_median_f0(_clip(corpus, v, e, n)) for n in (1, 2)]) for e in opts.emotions}
        assert min(f0["happy"], f0["fearful"], f0["angry"]) > f0["neutral"] > max(f0["sad"], f0["calm"]), (v, f0)


def test_rows_carry_labels_genders_and_speaker_splits(corpus: Path) -> None:
    opts = syn.SyntheticOptions()
    rows = list(syn.scan(corpus, opts))
    assert len(rows) == 144 and not [r for r in rows if isinstance(r, Quarantined)]
    assert len({r["id"] for r in rows}) == 144
    voices = {v.speaker: (i, v) for i, v in enumerate(opts.voices, start=1)}
    splits: dict[str, set[str]] = {}
    for r in rows:
        assert set(UTTERANCE_COLUMNS) <= set(r)
        speaker, emotion, n = Path(r["audio_path"]).stem.rsplit("_", 2)
        index, voice = voices[speaker]
        assert r["id"] == f"synthetic/{speaker}_{emotion}_{n}"
        assert r["audio_path"] == f"{speaker}/{speaker}_{emotion}_{n}.wav"
        assert Path(r[SOURCE_KEY]) == corpus / r["audio_path"]
        assert r["corpus"] == "synthetic" and r["speaker_id"] == f"synthetic/{speaker}"
        assert r["emotion_native"] == r["emotion"] == emotion
        assert r["sentiment"] == {"neutral": "neutral", "calm": "neutral", "happy": "positive"}.get(emotion, "negative")
        assert r["gender"] == voice.gender
        assert r["fold"] == index
        assert r["split"] == {1: "test", 2: "validation"}.get(index, "train")
        assert r["transcript_ref"] == opts.sentences[int(n) - 1]
        assert r["style"] is None
        splits.setdefault(r["split"], set()).add(speaker)
    assert splits == {"test": {"en-us-f3"}, "validation": {"en-us-m3"}, "train": set(voices) - {"en-us-f3", "en-us-m3"}}
    assert sum(r["gender"] == "female" for r in rows) == 72


def test_second_call_writes_nothing_and_fresh_dir_is_identical(corpus: Path, tmp_path: Path) -> None:
    before = _tree(corpus)
    syn.synthesize(corpus, syn.SyntheticOptions())
    list(syn.scan(corpus, syn.SyntheticOptions()))
    assert _tree(corpus) == before
    fresh = tmp_path / "again"
    syn.synthesize(fresh, syn.SyntheticOptions())
    assert _hashes(fresh) == _hashes(corpus)
    assert [p.name for p in tmp_path.iterdir()] == ["again"], "temporary folders left behind"


@needs_espeak
def test_scan_synthesises_into_missing_or_empty_dir(tmp_path: Path) -> None:
    rows = list(syn.scan(tmp_path / "a" / "b", SMALL))
    assert len(rows) == 4 and (tmp_path / "a" / "b" / syn.MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(list(get_adapter("synthetic").scan(empty, SMALL))) == 4


@needs_espeak
def test_crash_leaves_no_complete_looking_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = syn._render
    calls = []

    def flaky(espeak: str, root: Path, clip: object) -> None:
        calls.append(clip)
        if len(calls) == 3:
            raise RuntimeError("power cut")
        real(espeak, root, clip)  # type: ignore[arg-type]

    monkeypatch.setattr(syn, "_render", flaky)
    d = tmp_path / "corpus"
    with pytest.raises(RuntimeError, match="power cut"):
        syn.synthesize(d, SMALL)
    assert not d.exists()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(syn, "_render", real)
    syn.synthesize(d, SMALL)
    assert syn.is_complete(d, SMALL)


@needs_espeak
def test_stale_or_damaged_corpus_is_regenerated(tmp_path: Path) -> None:
    d = tmp_path / "corpus"
    syn.synthesize(d, SMALL)
    other = SMALL.model_copy(update={"emotions": ["angry"]})
    assert not syn.is_complete(d, other)
    syn.synthesize(d, other)
    assert sorted(p.stem for p in d.rglob("*.wav")) == ["en-us-f3_angry_01", "en-us-m3_angry_01"]
    victim = d / "en-us-m3" / "en-us-m3_angry_01.wav"
    victim.unlink()
    assert not syn.is_complete(d, other)
    syn.synthesize(d, other)
    assert victim.is_file() and syn.is_complete(d, other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_foreign_folder_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="not empty"):
        syn.synthesize(tmp_path, SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_missing_espeak_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(CorpusError, match=r"apt-get install espeak-ng"):
        list(syn.scan(tmp_path / "corpus", SMALL))
    assert not (tmp_path / "corpus").exists()


@needs_espeak
def test_complete_corpus_needs_no_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syn.synthesize(tmp_path / "c", SMALL)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert len(list(syn.scan(tmp_path / "c", SMALL))) == 4


@needs_espeak
def test_ignored_voice_variant_is_refused(tmp_path: Path) -> None:
    # espeak-ng silently falls back to the plain voice for an unknown variant: the gender label would lie.
    bad = SMALL.model_copy(update={"voices": [syn.Voice(espeak="en-us+nosuchvariant", gender="female")]})
    with pytest.raises(CorpusError, match="ignores the variant"):
        syn.synthesize(tmp_path / "c", bad)
    assert list(tmp_path.iterdir()) == []


def test_options_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="no prosody profile"):
        syn.SyntheticOptions(emotions=["bored"])
    with pytest.raises(ValueError, match="repeat speaker"):
        syn.SyntheticOptions(voices=[syn.Voice(espeak="en-us+f3", gender="female")] * 2)
    with pytest.raises(ValueError, match="espeak-ng"):
        syn.Voice(espeak="en-us+f3; rm -rf", gender="female")
    with pytest.raises(ValueError):
        syn.SyntheticOptions(sentences=["a", "a"])


def test_default_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    name = f"synthetic-v{syn.GENERATOR_VERSION}"
    monkeypatch.setenv("PALLM_CACHE", str(tmp_path / "pc"))
    assert syn.default_dir() == tmp_path / "pc" / name
    monkeypatch.delenv("PALLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert syn.default_dir() == tmp_path / "xdg" / "pallm" / name
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert syn.default_dir() == tmp_path / "home" / ".cache" / "pallm" / name


def test_adapter_is_registered_and_says_synthetic() -> None:
    a = get_adapter("synthetic")
    assert a is syn.ADAPTER and a.synthetic and not a.path_is_file
    assert a.options is syn.SyntheticOptions
    assert "SYNTHETIC" in a.description and "CC0-1.0" in a.license and "espeak-ng" in a.license


@needs_espeak
def test_unknown_voice_is_a_clear_error(tmp_path: Path) -> None:
    bad = SMALL.model_copy(update={"voices": [syn.Voice(espeak="xx-nosuchlanguage", gender="male")]})
    with pytest.raises(CorpusError, match=r"espeak-ng failed \(voice xx-nosuchlanguage, .*does not exist"):
        syn.synthesize(tmp_path / "c", bad)
    assert list(tmp_path.iterdir()) == []
