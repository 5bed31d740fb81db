"""Any other corpus, described by a user-written manifest: a CSV file or a JSONL file (chosen by suffix).

Fields (CSV header names are case-insensitive):

| field | required | meaning |
| --- | --- | --- |
| `path` | yes | audio file, relative to the manifest's folder or absolute |
| `label` | yes | a unified emotion word (`pallm.labels`, the `*` rows: neutral, calm, happy, ...) |
| `speaker` | yes | speaker name; splits and folds never mix speakers |
| `text` | no | reference transcript |
| `id` | no | utterance id; default: `path` relative to the manifest's folder, without suffix |
| `split` | no | train, validation or test (dev, val, valid are read as validation) |
| `gender` | no | female, male (f, m) or unknown; empty means unknown |

Other fields are ignored. A line that cannot be used is quarantined with its line number and the
reason: malformed JSON, missing required field, unknown label, split or gender, audio file not
found, duplicate id, or an absolute path outside the manifest's folder without an `id` (its default
id would depend on this machine's folders).

Splits: if any line gives a `split`, the manifest's splits are used as they are (`fold` stays null)
and every line must give one; a line without one is quarantined rather than silently put in train.
Otherwise each speaker goes to fold `1 + sha256(speaker) mod folds`, and `test_folds` /
`validation_folds` pick the held-out folds (defaults: 5 folds, fold 1 test, fold 2 validation).
With few speakers a fold may be empty: give a `split` column to control it exactly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import Field, model_validator

from pallm.corpora.base import CorpusAdapter, CorpusError, ItemError, Quarantined, SplitOptions, read_text, utterance
from pallm.labels import UnknownLabel, map_label

CORPUS = "manifest"
REQUIRED = ("path", "label", "speaker")
OPTIONAL = ("text", "id", "split", "gender")
SPLITS = {"train": "train", "validation": "validation", "test": "test", "dev": "validation", "val": "validation",
          "valid": "validation"}  # fmt: skip
GENDERS = {"female": "female", "f": "female", "male": "male", "m": "male", "unknown": "unknown", "": "unknown"}
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class ManifestOptions(SplitOptions):
    """Manifest options: how many speaker folds to hash into when the manifest gives no splits."""

    folds: int = Field(default=5, ge=2)
    test_folds: list[int] = Field(default_factory=lambda: [1])
    validation_folds: list[int] = Field(default_factory=lambda: [2])

    @model_validator(mode="after")
    def _check_folds(self) -> ManifestOptions:
        bad = [f for f in (*self.test_folds, *self.validation_folds) if not 1 <= f <= self.folds]
        if bad:
            raise ValueError(f"folds {bad} are outside 1..{self.folds}")
        if set(self.test_folds) & set(self.validation_folds):
            raise ValueError("a fold cannot be both test and validation")
        return self


def speaker_fold(speaker: str, folds: int) -> int:
    """The 1-based fold of a speaker: a hash of its name, the same on every machine and Python run."""
    return 1 + int.from_bytes(hashlib.sha256(speaker.encode("utf-8")).digest()[:8], "big") % folds


class _Bad(Exception):
    """One manifest line cannot be used; the message is the reason."""

    def __init__(self, reason: str, local_id: str | None = None) -> None:
        super().__init__(reason)
        self.local_id = local_id


def _records(manifest: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """Yield (line number, record) for each data line, or (line number, reason) for an unreadable one."""
    try:
        text = read_text(manifest)
    except ItemError as e:
        raise CorpusError(f"manifest {manifest}: {e}; save it as UTF-8") from None
    if manifest.suffix.lower() in JSONL_SUFFIXES:
        # split("\n"), not splitlines(): JSON strings may hold U+2028, which splitlines() breaks on.
        for n, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, f"not valid JSON ({e.msg} at column {e.colno})"
                continue
            yield (n, rec) if isinstance(rec, dict) else (n, f"expected a JSON object, got {type(rec).__name__}")
        return
    yield from _csv_records(manifest, text)


def _csv_records(manifest: Path, text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise CorpusError(
            f"manifest {manifest} is empty; its first line must name the columns, e.g. path,label,speaker"
        ) from None
    names = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise CorpusError(
            f"manifest {manifest} lacks column(s) {', '.join(missing)} in its header line (found: {', '.join(names)}); "
            f"required: {', '.join(REQUIRED)}; optional: {', '.join(OPTIONAL)}"
        )
    dups = sorted({h for h in names if names.count(h) > 1})
    if dups:
        raise CorpusError(f"manifest {manifest} repeats column(s) {', '.join(dups)} in its header line")
    end = reader.line_num
    while True:
        start = end + 1  # a quoted field may span lines: report where the record begins
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            end = reader.line_num
            yield start, f"unreadable CSV ({e})"
            continue
        end = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) > len(names):
            yield start, f"{len(cells)} fields but the header has {len(names)}; quote values that contain commas"
            continue
        yield start, dict(zip(names, cells, strict=False))  # short rows: trailing fields empty


def _field(rec: dict[str, Any], name: str) -> str:
    """A field as stripped text; '' when absent or null. Numbers are accepted (a speaker may be 7)."""
    value = rec.get(name)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Bad(f"field {name!r} must be text, got {json.dumps(value)[:40]}")
    return str(value).strip()


def scan(corpus_dir: Path, options: ManifestOptions) -> Iterator[dict[str, Any] | Quarantined]:
    """Yield one row per usable line of the manifest file `corpus_dir` (a .csv or .jsonl path)."""
    manifest = corpus_dir.absolute()
    suffix = manifest.suffix.lower()
    if suffix not in CSV_SUFFIXES + JSONL_SUFFIXES:
        raise CorpusError(f"manifest {manifest} must be a .csv or .jsonl file (the suffix picks the format)")
    if not manifest.is_file():
        what = "is a folder" if manifest.is_dir() else "does not exist"
        raise CorpusError(f"manifest {manifest} {what}; pass the path of a .csv or .jsonl manifest file")
    base = manifest.parent
    records = list(_records(manifest))
    given_splits = any(isinstance(r, dict) and _safe_field(r, "split") for _, r in records)
    seen: dict[str, int] = {}

    for line, rec in records:
        where = f"{manifest.name} line {line}"
        if isinstance(rec, str):
            yield Quarantined(None, CORPUS, f"{manifest.name}:{line}", "ingest", f"{where}: {rec}")
            continue
        try:
            yield _row(rec, line, base, options, given_splits, seen)
        except _Bad as e:
            qid = f"{CORPUS}/{e.local_id}" if e.local_id else None
            yield Quarantined(
                qid, CORPUS, _safe_field(rec, "path") or f"{manifest.name}:{line}", "ingest", f"{where}: {e}"
            )


def _safe_field(rec: dict[str, Any], name: str) -> str:
    try:
        return _field(rec, name)
    except _Bad:
        return ""


def _row(
    rec: dict[str, Any], line: int, base: Path, options: ManifestOptions, given_splits: bool, seen: dict[str, int]
) -> dict[str, Any]:
    """The utterance row for one manifest record; raises _Bad with the reason otherwise."""
    values = {name: _field(rec, name) for name in (*REQUIRED, *OPTIONAL)}
    missing = [name for name in REQUIRED if not values[name]]
    if missing:
        raise _Bad(f"missing required field(s) {', '.join(missing)}")

    raw = values["path"]
    source = Path(os.path.normpath(base / raw))  # normpath, not resolve: keep the user's symlinks
    try:
        rel = source.relative_to(base).as_posix()
    except ValueError:
        rel = None
    local_id = values["id"] or (str(PurePosixPath(rel).with_suffix("")) if rel else "")
    if not local_id:
        raise _Bad(f"path {raw!r} is outside the manifest's folder: give the line an `id` so the utterance id "
                   "does not depend on this machine's folders")  # fmt: skip

    try:
        map_label(CORPUS, values["label"])
    except UnknownLabel as e:
        raise _Bad(str(e), local_id) from None
    gender = GENDERS.get(values["gender"].lower())
    if gender is None:
        raise _Bad(f"unknown gender {values['gender']!r}; use female, male, unknown or leave it empty", local_id)
    if given_splits:
        split = SPLITS.get(values["split"].lower())
        if split is None:
            why = "no split while other lines give one" if not values["split"] else f"unknown split {values['split']!r}"
            raise _Bad(
                f"{why}; use train, validation or test on every line, or drop the split field everywhere", local_id
            )
        fold = None
    else:
        fold = speaker_fold(values["speaker"], options.folds)
        split = options.split_for(fold)

    if local_id in seen:
        raise _Bad(
            f"duplicate id {local_id!r} (first on line {seen[local_id]}); give each line a distinct `id`", local_id
        )
    if not source.is_file():
        raise _Bad(f"audio file not found: {raw!r} (looked for {source})", local_id)
    seen[local_id] = line
    return utterance(
        corpus=CORPUS,
        local_id=local_id,
        source=source,
        corpus_dir=base,
        emotion_native=values["label"],
        speaker=values["speaker"],
        gender=gender,
        split=split,
        fold=fold,
        transcript_ref=values["text"] or None,
    )


ADAPTER = CorpusAdapter(
    license_id="other",
    name=CORPUS,
    scan=scan,
    options=ManifestOptions,
    license="as given by the corpus owner (the manifest names files the user supplies; check their licence)",
    homepage="",
    citation="",
    description=(
        "A user-supplied corpus listed in a CSV or JSONL manifest (path, label, speaker, optional text, id, split, "
        "gender), labelled with the unified emotion words."
    ),
    path_is_file=True,
    one_speaker_per_file=False,
)
