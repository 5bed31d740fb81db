"""Word alignment (whisperx + wav2vec2) and diarization (pyannote) on tiny random models, offline.

The models come from tests/speech_models.py: real formats and loaders, random weights. So these tests pin down
the plumbing (files, calls, times, labels), not recognition quality.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import nltk
import numpy as np
import pytest
import soundfile as sf
import torch
from speech_models import build_tiny_aligner, build_tiny_diarizer

from pallm.speech.align import Aligner, _fill_times, align_words, load_aligner
from pallm.speech.diarize import Diarizer, cut_at_turns, load_diarizer, speaker_turns
from pallm.speech.words import Turn, Word

SENTENCE = "kids are talking by the door"  # what RAVDESS statement 01 says
ACTOR_01 = "Actor_01/03-01-01-01-01-01-01.wav"
ACTOR_02 = "Actor_02/03-01-01-01-01-01-02.wav"

# pyannote's statistics pooling warns when a speaker mask keeps a single frame; expected with random segmentation.
pytestmark = pytest.mark.filterwarnings(r"ignore:std\(\). degrees of freedom:UserWarning")


def _read(path: Path) -> np.ndarray:
    samples, rate = sf.read(path, dtype="float32")
    assert rate == 16000 and samples.ndim == 1
    return samples


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and on a busy 2-core machine torch's spinning worker threads
    made one diarization take 17 s instead of 1.3 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def aligner_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_aligner(tmp_path_factory.mktemp("aligner") / "tiny-wav2vec2")


@pytest.fixture(scope="module")
def aligner(aligner_folder: Path) -> Aligner:
    return load_aligner(str(aligner_folder))


@pytest.fixture(scope="module")
def diarizer_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_diarizer(tmp_path_factory.mktemp("diarizer") / "tiny-pipeline")


@pytest.fixture(scope="module")
def diarizer(diarizer_config: Path) -> Diarizer:
    return load_diarizer(str(diarizer_config.parent))


@pytest.fixture(scope="module")
def clip(ravdess16k: Path) -> np.ndarray:
    return _read(ravdess16k / ACTOR_01)


@pytest.fixture(scope="module")
def two_actors(ravdess16k: Path) -> np.ndarray:
    return np.concatenate([_read(ravdess16k / ACTOR_01), _read(ravdess16k / ACTOR_02)])


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """whisperx calls nltk.download() when punkt_tab is missing: make that an error instead of a network call."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"nltk.download{args} was called")

    monkeypatch.setattr(nltk, "download", refuse)


# ---- alignment -------------------------------------------------------------------------------------------------


def _assert_well_timed(words: list[Word], low: float, high: float) -> None:
    for word in words:
        assert math.isfinite(word.start) and math.isfinite(word.end), word
        assert low <= word.start <= word.end <= high, word
        assert 0.0 <= word.probability <= 1.0, word
    starts = [w.start for w in words]
    assert starts == sorted(starts)


@pytest.mark.usefixtures("no_downloads")
def test_align_words_times_each_word_of_a_real_clip(aligner: Aligner, clip: np.ndarray) -> None:
    duration = len(clip) / 16000
    path_before = list(nltk.data.path)

    words = align_words(aligner, [{"start": 0.0, "end": duration, "text": SENTENCE}], clip)

    assert [w.word for w in words] == SENTENCE.split()
    _assert_well_timed(words, 0.0, duration)
    # whisperx aligned them all (the random model still gives every character a posterior above zero)
    assert all(w.probability > 0.0 for w in words)
    assert all(w.end > w.start for w in words)
    assert nltk.data.path == path_before  # the temporary punkt_tab folder is gone from nltk's search path


@pytest.mark.usefixtures("no_downloads")
def test_align_words_keeps_words_whisperx_cannot_time(aligner: Aligner, clip: np.ndarray) -> None:
    duration = len(clip) / 16000
    segments = [
        # extra spaces and a number: whisperx aligns digits through its wildcard column
        {"start": 0.2, "end": 1.5, "text": "  Kids  are 42 talking "},
        # starts after the audio ends: whisperx gives up on it and returns no words at all
        {"start": duration + 1.0, "end": duration + 2.0, "text": "by the door."},
    ]

    words = align_words(aligner, segments, clip)

    assert [w.word for w in words] == ["Kids", "are", "42", "talking", "by", "the", "door."]
    _assert_well_timed(words, 0.0, duration)
    assert all(0.2 <= w.start and w.end <= 1.5 and w.probability > 0.0 for w in words[:4])
    # the untimed segment is clipped to the audio: its words sit at the very end, marked as not aligned
    assert [(w.start, w.end, w.probability) for w in words[4:]] == [(duration, duration, 0.0)] * 3


def test_fill_times_spreads_untimed_words_over_the_gap_by_length() -> None:
    words = _fill_times(
        [
            {"word": "x"},  # before any timed word: from the segment start to the next timed word
            {"word": "a", "start": 1.0, "end": 1.2, "score": 0.5},
            {"word": "bb"},
            {"word": "c", "start": float("nan"), "end": float("nan")},
            {"word": "d", "start": 2.2, "end": 3.5, "score": 1.5},  # past the segment end; score above 1
            {"word": "ef"},
        ],
        0.5,
        3.0,
    )

    assert [w.word for w in words] == ["x", "a", "bb", "c", "d", "ef"]
    spans = [(w.start, w.end) for w in words]
    assert spans == pytest.approx(
        [(0.5, 1.0), (1.0, 1.2), (1.2, 1.2 + 2 / 3), (1.2 + 2 / 3, 2.2), (2.2, 3.0), (3.0, 3.0)]
    )
    assert [w.probability for w in words] == [0.0, 0.5, 0.0, 0.0, 1.0, 0.0]


def test_fill_times_with_no_timed_word_spreads_over_the_segment() -> None:
    words = _fill_times([{"word": "one"}, {"word": "a"}], 1.0, 2.0)

    assert [(w.word, w.start, w.end, w.probability) for w in words] == [("one", 1.0, 1.75, 0.0), ("a", 1.75, 2.0, 0.0)]


@pytest.mark.parametrize("missing", ["config.json", "preprocessor_config.json", "vocab.json", "model.safetensors"])
def test_load_aligner_names_the_missing_file(aligner_folder: Path, tmp_path: Path, missing: str) -> None:
    folder = shutil.copytree(aligner_folder, tmp_path / "aligner")
    (folder / missing).unlink()

    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")) as caught:
        load_aligner(str(folder))

    assert caught.value.filename == str(folder / missing)


def test_load_aligner_names_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        load_aligner(str(tmp_path / "absent"))

    assert caught.value.filename == str(tmp_path / "absent")


def test_align_words_rejects_stereo(aligner: Aligner) -> None:
    with pytest.raises(ValueError, match="mono"):
        align_words(aligner, [{"start": 0.0, "end": 1.0, "text": "kids"}], np.zeros((16000, 2), dtype=np.float32))


# ---- diarization -----------------------------------------------------------------------------------------------


def _pyannote_turns(diarizer: Diarizer, audio: np.ndarray) -> list[tuple[float, float, str]]:
    """The same pipeline called directly, without whisperx or this module in between."""
    duration = len(audio) / 16000
    output = diarizer.pipeline.model({"waveform": torch.from_numpy(audio[None, :]), "sample_rate": 16000})
    turns = [
        (max(segment.start, 0.0), min(segment.end, duration), label)
        for segment, _, label in output.speaker_diarization.itertracks(yield_label=True)
    ]
    return sorted(turns)


def test_speaker_turns_match_the_pipeline_on_two_actors(diarizer: Diarizer, two_actors: np.ndarray) -> None:
    duration = len(two_actors) / 16000

    turns = speaker_turns(diarizer, two_actors)

    assert turns, "the tiny pipeline finds speech in any speech-like input"
    assert all(isinstance(t, Turn) and isinstance(t.speaker, str) for t in turns)
    assert all(0.0 <= t.start < t.end <= duration for t in turns)
    assert [t.start for t in turns] == sorted(t.start for t in turns)
    assert {t.speaker for t in turns} <= {f"SPEAKER_{k:02d}" for k in range(3)}
    direct = _pyannote_turns(diarizer, two_actors)
    assert [t.speaker for t in turns] == [label for _, _, label in direct]
    assert [(t.start, t.end) for t in turns] == [pytest.approx((start, end)) for start, end, _ in direct]


def test_speaker_turns_pass_the_speaker_bounds(diarizer: Diarizer, two_actors: np.ndarray) -> None:
    at_least_two = speaker_turns(diarizer, two_actors, min_speakers=2)
    at_most_one = speaker_turns(diarizer, two_actors, max_speakers=1)

    assert len({t.speaker for t in at_least_two}) == 2
    assert len({t.speaker for t in at_most_one}) == 1


def test_speaker_turns_rejects_stereo(diarizer: Diarizer) -> None:
    with pytest.raises(ValueError, match="mono"):
        speaker_turns(diarizer, np.zeros((2, 16000), dtype=np.float32))


def test_load_diarizer_names_a_missing_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config") as in_folder:
        load_diarizer(str(tmp_path))
    with pytest.raises(FileNotFoundError) as as_file:
        load_diarizer(str(tmp_path / "pipeline.yaml"))

    assert in_folder.value.filename == str(tmp_path / "config.yaml")
    assert as_file.value.filename == str(tmp_path / "pipeline.yaml")


def test_load_diarizer_names_a_missing_checkpoint(diarizer_config: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(diarizer_config.parent, tmp_path / "pipeline")
    (folder / "segmentation" / "pytorch_model.bin").unlink()

    # pyannote's own error, from the "$model/segmentation" entry resolved next to config.yaml
    with pytest.raises(FileNotFoundError, match=r"segmentation/pytorch_model\.bin"):
        load_diarizer(str(folder / "config.yaml"))


# ---- cutting words at turns ------------------------------------------------------------------------------------


def _w(word: str, start: float, end: float) -> Word:
    return Word(word=word, start=start, end=end, probability=0.9)


A1, B1, A2 = Turn(0.0, 1.0, "A"), Turn(1.0, 2.0, "B"), Turn(2.0, 3.0, "A")


def test_cut_at_turns_gives_each_word_to_the_turn_it_overlaps_most() -> None:
    w1, w2, w3, w4 = _w("one", 0.1, 0.4), _w("two", 0.8, 1.3), _w("three", 1.5, 1.8), _w("four", 2.5, 2.9)

    # turns given out of order: they are sorted by start
    assert cut_at_turns([w1, w2, w3, w4], [A2, B1, A1]) == [(A1, [w1]), (B1, [w2, w3]), (A2, [w4])]


def test_cut_at_turns_merges_consecutive_turns_of_one_speaker() -> None:
    a_early, a_late, b = Turn(0.0, 1.0, "A"), Turn(1.5, 2.0, "A"), Turn(2.0, 3.0, "B")
    words = [_w("one", 0.2, 0.5), _w("two", 1.6, 1.9), _w("three", 2.2, 2.6)]

    assert cut_at_turns(words, [a_early, a_late, b]) == [
        (Turn(0.0, 2.0, "A"), words[:2]),
        (b, words[2:]),
    ]


def test_cut_at_turns_uses_the_nearest_turn_for_words_outside_all_turns() -> None:
    a, b = Turn(0.0, 0.75, "A"), Turn(1.5, 2.0, "B")
    gap_near_a, gap_near_b, after_all = _w("x", 0.8, 0.85), _w("y", 1.3, 1.4), _w("z", 2.5, 2.6)
    tie = _w("t", 1.0, 1.25)  # 0.25 s from each: the earlier turn wins

    assert cut_at_turns([gap_near_a, tie, gap_near_b, after_all], [a, b]) == [
        (a, [gap_near_a, tie]),
        (b, [gap_near_b, after_all]),
    ]


def test_cut_at_turns_leaves_out_turns_without_words_and_keeps_word_order() -> None:
    words = [_w("late", 2.1, 2.2), _w("early", 0.1, 0.2)]  # word order is kept inside a turn

    assert cut_at_turns(words, [A1, B1, A2]) == [(A1, [words[1]]), (A2, [words[0]])]
    assert cut_at_turns([], [A1, B1]) == []
    assert cut_at_turns(words, []) == []


def test_cut_at_turns_zero_length_word_inside_a_turn() -> None:
    point = _w("um", 1.5, 1.5)

    assert cut_at_turns([point], [A1, B1, A2]) == [(B1, [point])]
