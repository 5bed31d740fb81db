"""What every corpus adapter shares: the adapter record, the utterance row builder, quarantine records.

An adapter is a plain function `scan(corpus_dir, options) -> Iterator[dict | Quarantined]` that
walks a corpus on disk and yields one utterance row per item (the columns in
`pallm.schema.UTTERANCE_COLUMNS`) or a `Quarantined` record for an item it cannot read. It reads
only labels and file names: decoding audio is the audio stage's job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pallm.labels import map_label
from pallm.schema import UTTERANCE_COLUMNS, validate_row

#: Row key holding the absolute path of the source file. Not a dataset column: stages read it,
#: shard writers drop it.
SOURCE_KEY = "_source"


@dataclass(frozen=True)
class Quarantined:
    """An item set aside with the reason, instead of failing the build."""

    id: str | None
    corpus: str
    path: str
    stage: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "corpus": self.corpus, "path": self.path, "stage": self.stage, "reason": self.reason}


class ItemError(Exception):
    """Raised by a stage for one item that must be quarantined; the message is the reason."""


class CorpusError(Exception):
    """A problem with a whole corpus (missing folder, wrong layout): stops the build."""


class SplitOptions(BaseModel):
    """Which speaker-independent folds form the test and validation splits; the rest is train."""

    model_config = ConfigDict(extra="forbid")

    test_folds: list[int] = Field(default_factory=list)
    validation_folds: list[int] = Field(default_factory=list)

    def split_for(self, fold: int | None) -> str:
        if fold is not None and fold in self.test_folds:
            return "test"
        if fold is not None and fold in self.validation_folds:
            return "validation"
        return "train"


Scan = Callable[[Path, Any], Iterator["dict[str, Any] | Quarantined"]]


@dataclass(frozen=True)
class CorpusAdapter:
    """A corpus the pipeline can ingest: its scanner, options model and provenance for the card."""

    name: str
    scan: Scan
    options: type[BaseModel]
    license: str
    homepage: str
    citation: str
    description: str
    #: the licence as a Hugging Face card identifier (`cc-by-nc-sa-4.0`, `other`, ...)
    license_id: str = "other"
    synthetic: bool = False
    #: each file holds one speaker (no diarization needed); a manifest may list whole conversations
    one_speaker_per_file: bool = True
    #: whether the path names a file (a manifest) rather than a folder
    path_is_file: bool = False
    #: where the corpus lives when no path is given (only corpora the project makes itself)
    default_path: Callable[[], Path] | None = None


def utterance(
    *,
    corpus: str,
    local_id: str,
    source: Path,
    corpus_dir: Path,
    emotion_native: str,
    speaker: str,
    gender: str,
    split: str,
    fold: int | None = None,
    transcript_ref: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build one utterance row: labels mapped through the label map, ids prefixed by corpus.

    `local_id` must be unique within the corpus and stable across machines (derived from the
    corpus's own ids or relative paths, never from absolute paths or scan order).
    Raises `pallm.labels.UnknownLabel` for a label the map does not know.
    """
    mapped = map_label(corpus, emotion_native)
    try:
        rel = source.relative_to(corpus_dir).as_posix()
    except ValueError:
        rel = source.as_posix()
    row: dict[str, Any] = dict.fromkeys(UTTERANCE_COLUMNS)
    row.update(
        id=f"{corpus}/{local_id}",
        corpus=corpus,
        split=split,
        fold=fold,
        speaker_id=f"{corpus}/{speaker}",
        gender=gender if gender in ("female", "male") else "unknown",
        audio_path=rel,
        emotion_native=emotion_native,
        emotion=mapped.emotion,
        sentiment=mapped.sentiment,
        transcript_ref=transcript_ref,
        flags=[],
    )
    unknown = set(extra) - set(UTTERANCE_COLUMNS)
    if unknown:
        raise KeyError(f"not utterance columns: {sorted(unknown)}")
    row.update(extra)
    row[SOURCE_KEY] = str(source)
    validate_row(row, UTTERANCE_COLUMNS)
    return row


def read_text(path: Path) -> str:
    """Read a corpus text file as UTF-8; other encodings raise ItemError naming the byte offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ItemError(f"{path.name} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def text_lines(path: Path) -> Iterator[tuple[int, str | None, bytes]]:
    """Each line as (number, text or None when it is not UTF-8, raw bytes): one bad line spoils only itself."""
    for n, raw in enumerate(path.read_bytes().removeprefix(b"\xef\xbb\xbf").splitlines(), 1):
        try:
            yield n, raw.decode("utf-8"), raw
        except UnicodeDecodeError:
            yield n, None, raw


def not_utf8_reason(where: str, raw: bytes) -> str:
    """The reason for a line that is not UTF-8, naming the first bad byte."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"{where} is not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); re-save the file as UTF-8"
    return f"{where} is not UTF-8"


def audio_files(root: Path, suffixes: Sequence[str] = (".wav",)) -> list[Path]:
    """All files under `root` with one of the suffixes (case-insensitive), sorted for stable order."""
    wanted = {s.lower() for s in suffixes}
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in wanted and p.is_file())
