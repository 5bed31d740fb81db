"""IEMOCAP (Busso et al., 2008): utterance labels from `SessionN/dialog/EmoEvaluation/<dialog>.txt`.

Layout of a release (`IEMOCAP_full_release/`), of which the adapter reads three parts per session:

- `SessionN/sentences/wav/<dialog>/<utt>.wav`: one file per utterance;
- `SessionN/dialog/EmoEvaluation/<dialog>.txt`: a `%` header line, then one block per utterance: a
  summary line `[start - end]<TAB>utt<TAB>label<TAB>[V, A, D]` followed by per-annotator lines
  (`C-...` categorical, `A-...` dimensional) that are ignored. The subfolders `Categorical/`,
  `Attribute/` and `Self-evaluation/` hold the raw annotations and are ignored too;
- `SessionN/dialog/transcriptions/<dialog>.txt`: `utt [start-end]: text`. Lines that are not an
  utterance (`M: ...`, ids such as `Ses01F_impro01_MXX0`) are skipped quietly.

Every session has one female and one male actor: utterance `Ses01F_impro01_M003` is spoken by the
male actor of session 1 (the letter of its last `_` part), whichever actor led the dialog (the
letter after `Ses01`). Folds are leave-one-session-out (fold = session); the standard evaluation
keeps the 4-class view (`emotion_4class`: neu, hap, ang, sad, with exc merged into hap), 5,531
utterances, and tests on session 5 by default.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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

CORPUS = "iemocap"
#: The label codes of the EmoEvaluation files (the label map's iemocap rows).
LABELS = frozenset(m.native for m in LABEL_MAP if m.corpus == CORPUS)
#: The standard 4-class view: excited is merged into happy; every other label has no 4-class value.
FOUR_CLASS = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
GENDERS = {"F": "female", "M": "male"}

_NUM = r"(\d+(?:\.\d+)?)"
_UTT = re.compile(r"^(?P<dialog>Ses(?P<session>\d{2})[FM]_(?P<part>impro|script)[0-9A-Za-z_]*)_(?P<gender>[FM])\d{3}$")
_UTT_IN_LINE = re.compile(r"Ses\d{2}[FM]_\S+?_[FM]\d{3}(?![0-9A-Za-z])")
_SUMMARY = re.compile(rf"^\[{_NUM}\s*-\s*{_NUM}\]\s+(?P<utt>\S+)\s+(?P<label>\S+)\s+\[{_NUM},\s*{_NUM},\s*{_NUM}\]\s*$")
_TRANSCRIPT = re.compile(r"^(?P<utt>\S+)\s*\[[^\]]*\]:\s?(?P<text>.*)$")
_SUMMARY_FORMAT = "[start - end]<TAB>utt_id<TAB>label<TAB>[V, A, D]"


class IemocapOptions(SplitOptions):
    """IEMOCAP options: folds are sessions (1-5); session 5 is the test split unless told otherwise."""

    test_folds: list[int] = Field(default_factory=lambda: [5])
    validation_folds: list[int] = Field(default_factory=list)
    #: keep only the standard 4-class utterances (neu, hap+exc, ang, sad)
    four_class_only: bool = False


@dataclass(frozen=True)
class Label:
    """One EmoEvaluation summary line."""

    utt: str
    label: str
    start_s: float
    end_s: float
    valence: float
    arousal: float
    dominance: float
    where: str  # "<file> line <n>", for messages


@dataclass
class _Session:
    """What one session's text files say, plus the problems found while reading them."""

    number: int
    labels: dict[str, Label] = field(default_factory=dict)
    transcripts: dict[str, str] = field(default_factory=dict)
    wavs: dict[str, Path] = field(default_factory=dict)
    #: utterance id -> reason it must be quarantined (a bad line that names it)
    problems: dict[str, str] = field(default_factory=dict)
    #: problems that name no utterance
    orphans: list[Quarantined] = field(default_factory=list)


def parse_utterance_id(utt: str) -> dict[str, Any] | None:
    """Decode `Ses01F_impro01_M003` into dialog, session, part and speaker gender letter; None if not one."""
    m = _UTT.match(utt)
    if not m:
        return None
    return {"dialog": m["dialog"], "session": int(m["session"]), "part": m["part"], "gender": m["gender"]}


def scan(corpus_dir: Path, options: IemocapOptions) -> Iterator[dict[str, Any] | Quarantined]:
    """Yield one row per IEMOCAP utterance under `corpus_dir` (the folder holding `Session1`..`Session5`)."""
    for number, session_dir in _sessions(corpus_dir):
        session = _read_session(corpus_dir, session_dir, number)
        yield from session.orphans
        for utt in sorted(set(session.labels) | set(session.wavs) | set(session.problems)):
            item = _utterance(corpus_dir, session, utt, options)
            if item is not None:
                yield item


def _sessions(corpus_dir: Path) -> list[tuple[int, Path]]:
    """The session folders present, checked for the parts the adapter reads; CorpusError says what is missing."""
    if not corpus_dir.is_dir():
        raise CorpusError(f"IEMOCAP folder {corpus_dir} does not exist; point to IEMOCAP_full_release/")
    found = sorted(
        (int(p.name[len("Session") :]), p) for p in corpus_dir.iterdir() if re.fullmatch(r"Session[1-5]", p.name)
    )
    if not found:
        raise CorpusError(
            f"no Session1..Session5 folders in {corpus_dir}; point to the IEMOCAP_full_release/ folder that holds them"
        )
    for _, session_dir in found:
        for part in ("sentences/wav", "dialog/EmoEvaluation"):
            if not (session_dir / part).is_dir():
                raise CorpusError(f"{session_dir / part} is missing: IEMOCAP sessions need {part}/ (incomplete copy?)")
    return found


def _read_session(corpus_dir: Path, session_dir: Path, number: int) -> _Session:
    """Read one session's labels, transcripts and audio file list."""
    session = _Session(number)
    for path in _text_files(session_dir / "dialog" / "EmoEvaluation"):
        _read_labels(path, path.relative_to(corpus_dir).as_posix(), session)
    for path in _text_files(session_dir / "dialog" / "transcriptions"):
        _read_transcripts(path, path.relative_to(corpus_dir).as_posix(), session)
    _find_wavs(corpus_dir, session_dir / "sentences" / "wav", session)
    return session


def _text_files(folder: Path) -> list[Path]:
    """The `.txt` files directly in `folder` (not its subfolders), without dot-files, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.txt") if p.is_file() and not p.name.startswith("."))


def _utt_named_in(raw_line: str) -> str | None:
    """The utterance id a damaged line names, if any, so the problem can be pinned on that utterance."""
    m = _UTT_IN_LINE.search(raw_line)
    return m.group(0) if m and parse_utterance_id(m.group(0)) else None


def _read_labels(path: Path, rel: str, session: _Session) -> None:
    """Collect the summary lines of one EmoEvaluation file; bad lines become problems."""
    for n, line, raw in text_lines(path):
        where = f"{rel} line {n}"
        if line is None:
            _problem(session, rel, _utt_named_in(raw.decode("latin-1")), not_utf8_reason(where, raw))
            continue
        if not line.startswith("["):
            continue  # header (%), annotator lines (C-, A-), blank lines
        m = _SUMMARY.match(line)
        utt = m["utt"] if m and parse_utterance_id(m["utt"]) else _utt_named_in(line)
        if m is None or parse_utterance_id(m["utt"]) is None:
            reason = f"{where}: malformed summary line, expected {_SUMMARY_FORMAT}: {line.strip()[:100]!r}"
            _problem(session, rel, utt, reason)
        elif m["utt"] in session.labels:
            _problem(
                session, rel, utt, f"{where}: second summary line for {utt} (first at {session.labels[utt].where})"
            )
        else:
            start, end, v, a, d = (float(m[i]) for i in (1, 2, 5, 6, 7))
            session.labels[m["utt"]] = Label(m["utt"], m["label"], start, end, v, a, d, where)


def _read_transcripts(path: Path, rel: str, session: _Session) -> None:
    """Collect `utt [start-end]: text` lines; a line that is not UTF-8 quarantines its utterance only."""
    for n, line, raw in text_lines(path):
        if line is None:
            _problem(session, rel, _utt_named_in(raw.decode("latin-1")), not_utf8_reason(f"{rel} line {n}", raw))
            continue
        m = _TRANSCRIPT.match(line)
        if m and parse_utterance_id(m["utt"]):
            session.transcripts.setdefault(m["utt"], m["text"].strip())


def _find_wavs(corpus_dir: Path, wav_dir: Path, session: _Session) -> None:
    """Index `sentences/wav/<dialog>/<utt>.wav`; files elsewhere or misnamed are quarantined."""
    for path in audio_files(wav_dir):
        if path.name.startswith("."):
            continue  # macOS AppleDouble sidecars ("._name.wav") are not audio
        rel = path.relative_to(corpus_dir).as_posix()
        parsed = parse_utterance_id(path.stem)
        parts = path.relative_to(wav_dir).parts
        if parsed is None or len(parts) != 2 or parts[0] != parsed["dialog"] or parsed["session"] != session.number:
            session.orphans.append(
                Quarantined(None, CORPUS, rel, "ingest",
                            f"{rel}: not an IEMOCAP utterance file; expected "
                            f"Session{session.number}/sentences/wav/<dialog>/<dialog>_<F|M><NNN>.wav")
            )  # fmt: skip
        else:
            session.wavs[path.stem] = path


def _problem(session: _Session, rel: str, utt: str | None, reason: str) -> None:
    """Record a problem against the utterance it names, or as an orphan record of the file."""
    if utt is not None:
        session.problems.setdefault(utt, reason)
    else:
        session.orphans.append(Quarantined(None, CORPUS, rel, "ingest", reason))


def _utterance(
    corpus_dir: Path, session: _Session, utt: str, options: IemocapOptions
) -> dict[str, Any] | Quarantined | None:
    """The row for one utterance, a Quarantined record saying what is wrong, or None when filtered out."""
    wav, label = session.wavs.get(utt), session.labels.get(utt)
    problem = _problem_with(corpus_dir, session, utt)
    if problem is not None:
        return problem
    assert wav is not None and label is not None  # _problem_with rules out both
    if options.four_class_only and label.label not in FOUR_CLASS:
        return None
    parsed = parse_utterance_id(utt)
    assert parsed is not None  # wav files are indexed by valid ids only
    return utterance(
        corpus=CORPUS,
        local_id=utt,
        source=wav,
        corpus_dir=corpus_dir,
        emotion_native=label.label,
        speaker=f"session{session.number}-{parsed['gender']}",
        gender=GENDERS[parsed["gender"]],
        split=options.split_for(session.number),
        fold=session.number,
        transcript_ref=session.transcripts.get(utt),
        emotion_4class=FOUR_CLASS.get(label.label),
        part=parsed["part"],
        session=session.number,
        dialog=parsed["dialog"],
        start_s=label.start_s,
        end_s=label.end_s,
        valence=label.valence,
        arousal=label.arousal,
        dominance=label.dominance,
    )


def _problem_with(corpus_dir: Path, session: _Session, utt: str) -> Quarantined | None:
    """Why an utterance cannot become a row (bad line, no label, no audio, unknown label), or None."""
    dialog = utt.rsplit("_", 1)[0]
    wav, label = session.wavs.get(utt), session.labels.get(utt)
    rel = wav.relative_to(corpus_dir).as_posix() if wav else f"Session{session.number}/sentences/wav/{dialog}/{utt}.wav"
    reason = None
    if utt in session.problems:
        reason = session.problems[utt]
    elif label is None:
        reason = f"{rel} has no summary line in Session{session.number}/dialog/EmoEvaluation/{dialog}.txt"
    elif wav is None:
        reason = f"{label.where} labels {utt} but {rel} does not exist"
    elif label.label not in LABELS:
        # checked here, not left to the label map, whose shared rows would accept words like "happy"
        reason = f"{label.where}: unknown label {label.label!r}; EmoEvaluation codes are {', '.join(sorted(LABELS))}"
    return None if reason is None else Quarantined(f"{CORPUS}/{utt}", CORPUS, rel, "ingest", reason)


ADAPTER = CorpusAdapter(
    license_id="other",
    name=CORPUS,
    scan=scan,
    options=IemocapOptions,
    license="IEMOCAP release agreement (research use; users bring their own copy)",
    homepage="https://sail.usc.edu/iemocap/",
    citation=(
        "Busso C, Bulut M, Lee CC, Kazemzadeh A, Mower E, Kim S, Chang JN, Lee S, Narayanan SS (2008). "
        "IEMOCAP: interactive emotional dyadic motion capture database. Language Resources and "
        "Evaluation 42(4): 335-359."
    ),
    description=(
        "10 actors in 5 dyadic sessions, improvised and scripted; utterances with categorical labels "
        "(standard 4-class view, exc merged into hap) and valence/activation/dominance ratings."
    ),
)
