"""Word timestamps from a wav2vec2 CTC aligner through whisperx's forced alignment.

whisperx is imported inside the functions, so this module imports without it (the speech extra is optional).
"""

from __future__ import annotations

import errno
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pallm.schema import SAMPLE_RATE
from pallm.speech.models import looks_like_path
from pallm.speech.words import Word

if TYPE_CHECKING:
    import torch


# What Wav2Vec2Processor + Wav2Vec2ForCTC.from_pretrained need from a local folder.
ALIGNER_FILES = ("config.json", "preprocessor_config.json", "vocab.json")
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)

# The files of one nltk punkt_tab language model (nltk.tokenize.punkt.load_punkt_params reads all four).
PUNKT_TAB_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


@dataclass(frozen=True)
class Aligner:
    """A loaded wav2vec2 CTC model and the metadata whisperx.align needs with it."""

    model: torch.nn.Module
    metadata: dict[str, Any]  # whisperx's align_model_metadata: language, character dictionary, model type
    name: str  # the hub name or the local folder it came from
    language: str
    device: str


def load_aligner(model: str, *, language: str = "en", device: str = "cpu") -> Aligner:
    """Load a wav2vec2 CTC aligner: a Hugging Face hub name, a torchaudio bundle name, or a local model folder.

    A local folder must hold config.json, preprocessor_config.json, vocab.json and the weights; a missing one
    raises FileNotFoundError naming it (whisperx would only say the model "could not be found in huggingface").
    """
    import whisperx

    name = model
    if looks_like_path(model):
        folder = Path(model).expanduser()
        check_aligner_folder(folder)
        name = str(folder)
    align_model, metadata = whisperx.load_align_model(language_code=language, device=device, model_name=name)
    return Aligner(model=align_model, metadata=metadata, name=name, language=language, device=device)


def align_words(aligner: Aligner, segments: Sequence[Mapping[str, Any]], audio: np.ndarray) -> list[Word]:
    """Time every word of `segments` (dicts with start, end in seconds and text) against `audio`.

    `audio` is float32 mono at 16 kHz. Every word of the text comes back, in order: words whisperx cannot time
    (its alignment of the segment failed, or it returned a word without times) get times spread between their
    timed neighbours, or over the segment. Times are clipped to the audio; probability is whisperx's score
    (mean character posterior, 0..1), or 0.0 for a word that was not aligned.
    """
    import whisperx
    from whisperx.alignment import LANGUAGES_WITHOUT_SPACES

    samples = np.ascontiguousarray(audio, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"audio must be mono (one dimension), got shape {samples.shape}")
    duration = len(samples) / SAMPLE_RATE
    no_spaces = aligner.metadata.get("language", aligner.language) in LANGUAGES_WITHOUT_SPACES

    words: list[Word] = []
    with _punkt_model(aligner.language):
        for segment in segments:
            # Single spaces only: whisperx splits words on " ", so runs of spaces would make empty words.
            text = " ".join(str(segment["text"]).split())
            if not text:
                continue
            start = _clip(float(segment["start"]), 0.0, duration)
            end = _clip(float(segment["end"]), start, duration)
            # One segment per call, so a segment whisperx gives up on is known and its words are kept.
            result = whisperx.align(
                [{"start": start, "end": end, "text": text}],
                aligner.model,
                aligner.metadata,
                samples,
                aligner.device,
            )
            aligned = [dict(word) for sub in result["segments"] for word in sub.get("words", [])]
            if not aligned:
                tokens = [c for c in text if not c.isspace()] if no_spaces else text.split(" ")
                aligned = [{"word": token} for token in tokens]
            words.extend(_fill_times(aligned, start, end))
    return words


def check_aligner_folder(folder: Path) -> None:
    """Raise FileNotFoundError naming the first file a local wav2vec2 aligner folder lacks."""
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, "wav2vec2 aligner folder not found", str(folder))
    for name in ALIGNER_FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(errno.ENOENT, f"wav2vec2 aligner folder lacks {name}", str(folder / name))
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            errno.ENOENT,
            f"wav2vec2 aligner folder lacks its weights ({' or '.join(WEIGHT_FILES)})",
            str(folder / WEIGHT_FILES[0]),
        )


@contextmanager
def _punkt_model(language: str) -> Iterator[None]:
    """Make sure nltk finds a punkt_tab model for `language` while whisperx.align runs.

    whisperx.align loads nltk's punkt_tab sentence splitter for every segment and calls nltk.download() when it
    is missing; there is no network here, and a pipeline must not fetch data behind the user's back. An installed
    punkt_tab is used as is. Otherwise an empty parameter set (four empty files) goes into a temporary nltk data
    folder for the duration of the call: punkt then splits sentences at ". ! ?" without knowing abbreviations,
    which only changes how whisperx groups words into sub-segments, not the word times this module returns.
    """
    import nltk
    from whisperx.utils import PUNKT_LANGUAGES

    name = PUNKT_LANGUAGES.get(language, "english")  # the same lookup whisperx.align makes
    try:
        nltk.data.find(f"tokenizers/punkt_tab/{name}/")
    except LookupError:
        installed = False
    else:
        installed = True
    if installed:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="pallm-punkt-") as root:
        model_dir = Path(root, "tokenizers", "punkt_tab", name)
        model_dir.mkdir(parents=True)
        for file_name in PUNKT_TAB_FILES:
            (model_dir / file_name).touch()
        nltk.data.path.insert(0, root)
        try:
            yield
        finally:
            nltk.data.path.remove(root)


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _fill_times(aligned: list[dict[str, Any]], low: float, high: float) -> list[Word]:
    """Words with times clipped to [low, high]; each run of untimed words shares the gap around it by length."""
    starts = [_finite(w.get("start")) for w in aligned]
    ends = [_finite(w.get("end")) for w in aligned]
    timed = [s is not None and e is not None for s, e in zip(starts, ends, strict=True)]
    spans: list[tuple[float, float]] = []
    i = 0
    while i < len(aligned):
        start, end = starts[i], ends[i]
        if start is not None and end is not None:
            start = _clip(start, low, high)
            spans.append((start, _clip(end, start, high)))
            i += 1
            continue
        j = i
        while j < len(aligned) and not timed[j]:
            j += 1
        left = spans[-1][1] if spans else low
        nxt = starts[j] if j < len(aligned) else None
        right = max(_clip(nxt, low, high) if nxt is not None else high, left)
        lengths = [max(len(str(w["word"])), 1) for w in aligned[i:j]]
        total = sum(lengths)
        position = left
        for length in lengths:
            step = (right - left) * length / total
            spans.append((position, min(position + step, right)))
            position += step
        i = j
    words = []
    for word, (start, end) in zip(aligned, spans, strict=True):
        score = _finite(word.get("score"))
        words.append(
            Word(
                word=str(word["word"]),
                start=start,
                end=end,
                probability=_clip(score, 0.0, 1.0) if score is not None else 0.0,
            )
        )
    return words
