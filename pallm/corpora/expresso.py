"""Expresso (Nguyen et al., 2023): expressive read speech and improvised dialogues, 4 speakers, 48 kHz.

Layout of the release (`expresso/`):

- `read_transcriptions.txt`: `<file stem><TAB><text>`, emphasised words in `*asterisks*` (a mark may
  span several words, `*belt loops.*`, and take the punctuation with it);
- `audio_48khz/read/<spk>/<style>/base/<spk>_<style>[_emphasis|_essentials]_<NNNNN>.wav` (mono) and
  `.../longform/<spk>_<style>_longform_<NNNNN>.wav` (default and narration only);
- `audio_48khz/conversational/<spkA>-<spkB>/<styleA>-<styleB>/<spkA>-<spkB>_<styleA>-<styleB>_<NNN>.wav`:
  stereo, channel 1 (our `channel` 0) is `spkA` speaking `styleA`, channel 2 is `spkB` in `styleB`; a
  single style name (`laughing/`) means both channels have it. Each file gives two rows, one per
  channel, never downmixed. Style names as on disk: `animaldir`, `childdir`, `nonverbal` (the
  README's table spells them animal_directed, child_directed, non_verbal). `singing` is the one
  improvised style that is mono and not a dialogue; it is left out unless asked for;
- `splits/{train,dev,test}.txt`: the official split, one file stem a line (`#` comments). Long files
  (conversations, longform) are cut: `<stem><TAB>(<start>s,<end>s)` with either bound optional, and a
  file then appears in two or three split files. Rows are whole files here (the audio stage does not
  cut), so such a file goes to the most held-out split it appears in (test, then dev, then train):
  nothing of a test segment reaches train. Files no split lists (singing) go to train.

Without `splits/` (or with `official_splits=False`) the split is speaker-independent instead: fold =
speaker number (ex01 -> 1 ... ex04 -> 4) and the options' test/validation folds pick the held-out
speakers. `fold` always holds the speaker number.

Gender: the release says 2 male and 2 female speakers but names no one; the only per-speaker
mapping found is third-party (Parler-TTS names ex01 Jerry, ex02 Elisabeth, ex03 Thomas, ex04 Talia),
so gender stays "unknown" until an official source confirms it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from pallm.corpora.base import (
    CorpusAdapter,
    CorpusError,
    Quarantined,
    SplitOptions,
    audio_files,
    not_utf8_reason,
    text_lines,
    utterance,
)
from pallm.labels import LABEL_MAP

CORPUS = "expresso"
#: Style names as they appear in folder and file names (the label map's expresso rows).
STYLES = frozenset(m.native for m in LABEL_MAP if m.corpus == CORPUS)
TRANSCRIPTS = "read_transcriptions.txt"
#: split file -> our split name
SPLIT_FILES = {"train": "train", "dev": "validation", "test": "test"}
#: a file listed in several split files (cut long files) goes to the first of these
_HELD_OUT_FIRST = ("test", "validation", "train")

_READ_NAME = re.compile(
    r"^(?P<spk>ex\d{2})_(?P<style>[a-z_]+?)(?:_(?P<sub>emphasis|essentials|longform))?_(?P<num>\d{5})$"
)
_CONV_NAME = re.compile(r"^(?P<pair>ex\d{2}-ex\d{2})_(?P<styles>[a-z_]+(?:-[a-z_]+)?)_(?P<num>\d{3})$")
_SINGING_NAME = re.compile(r"^(?P<who>ex\d{2}(?:-ex\d{2})?)_singing_(?P<num>\d+)$")
_SPLIT_LINE = re.compile(r"^(?P<stem>\S+)(?:\t\((?:\d+(?:\.\d+)?s)?,(?:\d+(?:\.\d+)?s)?\))?$")


class ExpressoOptions(SplitOptions):
    """Expresso options. Folds are speakers (ex01 -> 1 ... ex04 -> 4); they pick the split only when
    the official split files are absent or `official_splits` is False."""

    official_splits: bool = True
    include_singing: bool = False
    test_folds: list[int] = Field(default_factory=lambda: [4])
    validation_folds: list[int] = Field(default_factory=list)


@dataclass
class _Transcripts:
    """The read transcripts, and the lines that could not be used."""

    #: file stem -> (text, "<file> line <n>")
    texts: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: file stem -> reason its transcript line is unusable
    problems: dict[str, str] = field(default_factory=dict)
    #: unusable lines that name no file stem
    orphans: list[Quarantined] = field(default_factory=list)


@dataclass(frozen=True)
class _Splitter:
    """Decides a row's split: official split files when there are any, speaker folds otherwise."""

    options: ExpressoOptions
    official: Mapping[str, str] | None

    def split(self, stem: str, folds: list[int]) -> str:
        """The split of file `stem` whose speakers are in `folds` (held out if any of them is)."""
        if self.official is not None:
            return self.official.get(stem, "train")
        splits = {self.options.split_for(f) for f in folds}
        return next(s for s in _HELD_OUT_FIRST if s in splits)


def parse_emphasis(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Strip `*emphasis*` marks from a transcript; return the plain text and the emphasised words.

    Each emphasised word is `{"index": i, "word": w}` with `plain.split()[i] == w`: a word counts as
    emphasised if any of its characters lies between marks. ValueError if the marks are unbalanced.
    """
    if text.count("*") % 2:
        raise ValueError("odd number of '*' emphasis marks")
    words: list[str] = []
    emphasis: list[dict[str, Any]] = []
    inside = False
    for token in text.split():
        chars, starred = [], False
        for ch in token:
            if ch == "*":
                inside = not inside
            else:
                chars.append(ch)
                starred = starred or inside
        if chars:
            if starred:
                emphasis.append({"index": len(words), "word": "".join(chars)})
            words.append("".join(chars))
    return text.replace("*", "").strip(), emphasis


def scan(corpus_dir: Path, options: ExpressoOptions) -> Iterator[dict[str, Any] | Quarantined]:
    """Yield the rows of an Expresso release under `corpus_dir` (the folder holding `audio_48khz/`)."""
    audio_root = _check_layout(corpus_dir)
    official, split_problems = _official_splits(corpus_dir) if options.official_splits else (None, [])
    yield from split_problems
    splitter = _Splitter(options, official)
    if (audio_root / "read").is_dir():
        transcripts = _read_transcripts(corpus_dir)
        yield from transcripts.orphans
        yield from _scan_read(corpus_dir, audio_root / "read", transcripts, splitter)
    if (audio_root / "conversational").is_dir():
        yield from _scan_conversational(corpus_dir, audio_root / "conversational", splitter, options)


def _check_layout(corpus_dir: Path) -> Path:
    """The `audio_48khz` folder; CorpusError says what to fix when the layout is not Expresso's."""
    hint = "point to the expresso/ folder that holds audio_48khz/ and read_transcriptions.txt"
    if not corpus_dir.is_dir():
        raise CorpusError(f"Expresso folder {corpus_dir} does not exist; {hint}")
    audio_root = corpus_dir / "audio_48khz"
    if not audio_root.is_dir():
        down = (
            " (expresso/audio_48khz/ is one level down)" if (corpus_dir / "expresso" / "audio_48khz").is_dir() else ""
        )
        raise CorpusError(f"no audio_48khz/ folder in {corpus_dir}{down}; {hint}")
    if not (audio_root / "read").is_dir() and not (audio_root / "conversational").is_dir():
        raise CorpusError(f"{audio_root} has neither read/ nor conversational/; {hint}")
    if (audio_root / "read").is_dir() and not (corpus_dir / TRANSCRIPTS).is_file():
        raise CorpusError(f"{corpus_dir / TRANSCRIPTS} is missing: the read speech needs its transcripts; {hint}")
    return audio_root


def _official_splits(corpus_dir: Path) -> tuple[dict[str, str] | None, list[Quarantined]]:
    """File stem -> split from `splits/*.txt` (None without a `splits/` folder), and the bad lines."""
    folder = corpus_dir / "splits"
    if not folder.is_dir():
        return None, []
    missing = [f"{name}.txt" for name in SPLIT_FILES if not (folder / f"{name}.txt").is_file()]
    if missing:
        raise CorpusError(
            f"{folder} lacks {', '.join(missing)}; restore the official split files, remove splits/, "
            "or set official_splits=False to split by speaker"
        )
    listed: dict[str, set[str]] = {}
    problems: list[Quarantined] = []
    for name, split in SPLIT_FILES.items():
        rel = f"splits/{name}.txt"
        for n, line, raw in text_lines(folder / f"{name}.txt"):
            if line is None:
                problems.append(Quarantined(None, CORPUS, rel, "ingest", not_utf8_reason(f"{rel} line {n}", raw)))
            elif line.strip() and not line.startswith("#"):
                m = _SPLIT_LINE.match(line.rstrip())
                if m:
                    listed.setdefault(m["stem"], set()).add(split)
                else:
                    reason = (
                        f"{rel} line {n}: expected <file stem> or <file stem><TAB>(<start>s,<end>s), got {line[:80]!r}"
                    )
                    problems.append(Quarantined(None, CORPUS, rel, "ingest", reason))
    return {stem: next(s for s in _HELD_OUT_FIRST if s in splits) for stem, splits in listed.items()}, problems


def _read_transcripts(corpus_dir: Path) -> _Transcripts:
    """Parse `read_transcriptions.txt`; unusable lines are pinned on the stem they name when they name one."""
    out = _Transcripts()
    for n, line, raw in text_lines(corpus_dir / TRANSCRIPTS):
        where = f"{TRANSCRIPTS} line {n}"
        stem = raw.split(b"\t", 1)[0].split(b" ", 1)[0].decode("latin-1").strip()
        named = stem if _READ_NAME.match(stem) else None
        if line is None:
            _transcript_problem(out, named, not_utf8_reason(where, raw))
        elif not line.strip():
            continue
        elif "\t" not in line:
            _transcript_problem(out, named, f"{where}: expected <file stem><TAB><text>, found no tab")
        elif not (text := line.split("\t", 1)[1].strip()):
            _transcript_problem(out, named, f"{where}: empty transcript")
        elif stem in out.texts and out.texts[stem][0] != text:
            _transcript_problem(out, named, f"{where}: second, different transcript for {stem} ({out.texts[stem][1]})")
        else:
            out.texts.setdefault(stem, (text, where))
    return out


def _transcript_problem(out: _Transcripts, stem: str | None, reason: str) -> None:
    """Record a bad transcript line against its stem, or as an orphan record of the file."""
    if stem is not None:
        out.problems.setdefault(stem, reason)
    else:
        out.orphans.append(Quarantined(None, CORPUS, TRANSCRIPTS, "ingest", reason))


def _wavs(root: Path) -> Iterator[Path]:
    """The WAV files under `root`, without macOS AppleDouble sidecars (`._name.wav`), sorted."""
    return (p for p in audio_files(root) if not p.name.startswith("."))


def _scan_read(
    corpus_dir: Path, read_root: Path, transcripts: _Transcripts, splitter: _Splitter
) -> Iterator[dict[str, Any] | Quarantined]:
    """Rows of the read part: `read/<spk>/<style>/{base,longform}/<stem>.wav`."""
    expected = (
        "audio_48khz/read/<spk>/<style>/base/<spk>_<style>[_emphasis|_essentials]_<NNNNN>.wav "
        "or .../longform/<spk>_<style>_longform_<NNNNN>.wav"
    )
    for path in _wavs(read_root):
        rel = path.relative_to(corpus_dir).as_posix()
        stem = path.stem
        parts = path.relative_to(read_root).parts
        m = _READ_NAME.match(stem)
        if (
            m is None or len(parts) != 4 or (parts[0], parts[1]) != (m["spk"], m["style"])
            or parts[2] != ("longform" if m["sub"] == "longform" else "base")
        ):  # fmt: skip
            yield Quarantined(None, CORPUS, rel, "ingest", f"{rel}: bad file name or place; expected {expected}")
            continue
        longform = m["sub"] == "longform"
        if stem in transcripts.problems:
            yield Quarantined(f"{CORPUS}/{stem}", CORPUS, rel, "ingest", transcripts.problems[stem])
            continue
        text, where = transcripts.texts.get(stem, (None, ""))
        if text is None and not longform:
            yield Quarantined(f"{CORPUS}/{stem}", CORPUS, rel, "ingest", f"{rel}: no line for {stem} in {TRANSCRIPTS}")
            continue
        try:
            plain, emphasis = parse_emphasis(text) if text is not None else (None, None)
        except ValueError as e:
            yield Quarantined(f"{CORPUS}/{stem}", CORPUS, rel, "ingest", f"{where}: {e}")
            continue
        fold = int(m["spk"][2:])
        yield _row(
            corpus_dir, path, stem, m["style"], m["spk"], splitter.split(stem, [fold]), fold,
            transcript_ref=plain, emphasis=emphasis, part="longform" if longform else "read",
        )  # fmt: skip


def _scan_conversational(
    corpus_dir: Path, conv_root: Path, splitter: _Splitter, options: ExpressoOptions
) -> Iterator[dict[str, Any] | Quarantined]:
    """Rows of the improvised part: two per stereo dialogue file (one per channel), one per singing file."""
    expected = (
        "audio_48khz/conversational/<spkA>-<spkB>/<styleA>[-<styleB>]/<spkA>-<spkB>_<styleA>[-<styleB>]_<NNN>.wav"
    )
    for path in _wavs(conv_root):
        rel = path.relative_to(corpus_dir).as_posix()
        parts = path.relative_to(conv_root).parts
        if len(parts) == 3 and parts[1] == "singing":
            if options.include_singing:
                yield _singing_row(corpus_dir, path, parts[0], splitter)
            continue
        m = _CONV_NAME.match(path.stem)
        if m is None or len(parts) != 3 or (parts[0], parts[1]) != (m["pair"], m["styles"]):
            yield Quarantined(None, CORPUS, rel, "ingest", f"{rel}: bad file name or place; expected {expected}")
            continue
        speakers, styles = m["pair"].split("-"), m["styles"].split("-")
        if len(styles) == 1:
            styles *= 2  # one style folder name: both channels speak it
        for channel, (speaker, style) in enumerate(zip(speakers, styles, strict=True)):
            fold = int(speaker[2:])
            yield _row(
                corpus_dir, path, f"{path.stem}/ch{channel}", style, speaker, splitter.split(path.stem, [fold]),
                fold, part="conversational", channel=channel, dialog=path.stem,
            )  # fmt: skip


def _singing_row(corpus_dir: Path, path: Path, pair: str, splitter: _Splitter) -> dict[str, Any] | Quarantined:
    """One row for a mono singing file. Its singer is who the file name names: one speaker or the pair."""
    rel = path.relative_to(corpus_dir).as_posix()
    m = _SINGING_NAME.match(path.stem)
    if m is None or m["who"] not in (pair, *pair.split("-")):
        expected = f"audio_48khz/conversational/{pair}/singing/{pair}_singing_<NNN>.wav"
        return Quarantined(None, CORPUS, rel, "ingest", f"{rel}: bad file name; expected {expected}")
    folds = [int(s[2:]) for s in m["who"].split("-")]
    return _row(
        corpus_dir, path, path.stem, "singing", m["who"], splitter.split(path.stem, folds),
        folds[0] if len(folds) == 1 else None, part="conversational", dialog=path.stem,
    )  # fmt: skip


def _row(
    corpus_dir: Path, path: Path, local_id: str, style: str, speaker: str, split: str, fold: int | None, **extra: Any
) -> dict[str, Any] | Quarantined:
    """Build a row through `base.utterance`; a style that is not an Expresso style is quarantined."""
    if style not in STYLES:
        # checked here, not left to the label map, whose shared rows would accept words like "neutral"
        rel = path.relative_to(corpus_dir).as_posix()
        reason = f"{rel}: unknown style {style!r}; Expresso styles are {', '.join(sorted(STYLES))}"
        return Quarantined(f"{CORPUS}/{local_id}", CORPUS, rel, "ingest", reason)
    return utterance(
        corpus=CORPUS,
        local_id=local_id,
        source=path,
        corpus_dir=corpus_dir,
        emotion_native=style,
        speaker=speaker,
        gender="unknown",  # see the module docstring: no official per-speaker gender
        split=split,
        fold=fold,
        style=style,
        **extra,
    )


ADAPTER = CorpusAdapter(
    license_id="cc-by-nc-4.0",
    name=CORPUS,
    scan=scan,
    options=ExpressoOptions,
    license="CC BY-NC 4.0",
    homepage="https://speechbot.github.io/expresso/",
    citation=(
        "Nguyen TA, Hsu WN, D'Avirro A, Shi B, Gat I, Fazel-Zarani M, Remez T, Copet J, Synnaeve G, "
        "Hassid M, Kreuk F, Adi Y, Dupoux E (2023). EXPRESSO: A Benchmark and Analysis of Discrete "
        "Expressive Speech Resynthesis. Interspeech 2023. arXiv:2308.05725."
    ),
    description=(
        "4 speakers, 48 kHz: read sentences in 8 styles (with emphasis marks) and improvised "
        "dialogues in 26 styles, one actor per stereo channel, kept as one row per channel."
    ),
)
