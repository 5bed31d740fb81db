"""A dataset build as plain functions: plan the work, run one chunk, finalise the dataset folder.

`flows/build_dataset.py` orchestrates these with Prefect; nothing here imports Prefect, so every
step is testable on its own. The dataset folder is laid out as

    OUT/README.md                 data card (Hugging Face dataset card format)
    OUT/manifest.json             shards with checksums and row counts, config, code version
    OUT/quarantine.parquet        every item set aside, with the stage and the reason
    OUT/data/<split>-<corpus>-<chunk key>[-pN].parquet
    OUT/card/*.png                plots used by the card
    OUT/.pallm/measured/*         each chunk's measured rows and record: the cache of the costly pass
    OUT/.pallm/chunks/*.json      one record per finished chunk (its shards)

A build runs in two passes with a reduction between them. The measuring pass runs the per-row
stages (audio, speech, cues) over each chunk. Per-speaker statistics are then gathered from every
measured chunk, and the describing pass adds what needs them (z-scores, cue words) and writes the
shards. A chunk is the unit of work and of caching: its key hashes the rows it holds (labels,
relative paths, the source files' SHA-256) and every stage's fingerprint; the describing pass adds
the statistics of the chunk's speakers. A chunk whose record exists with its files intact is not
run again, so a rerun after a crash resumes where it stopped, and new utterances of a speaker
re-describe that speaker's chunks without re-measuring them.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import pallm
from pallm import cards
from pallm.audio.cues import cue_stage
from pallm.audio.stage import audio_stage
from pallm.config import BuildConfig, CorpusSpec
from pallm.corpora import get_adapter
from pallm.corpora.base import SOURCE_KEY, CorpusError, ItemError, Quarantined
from pallm.cues import normalize
from pallm.cues.normalize import SpeakerNorms
from pallm.cues.stage import describe_stage
from pallm.dataset import read_manifest
from pallm.labels import LABEL_MAP_VERSION
from pallm.lexical import LexicalProbe, lexical_stage
from pallm.resident import LoadLog, summarize_loads
from pallm.schema import COLUMN_NAMES, QUARANTINE_SCHEMA, SCHEMA_VERSION, validate_row
from pallm.shards import (
    TMP_PREFIX,
    ShardInfo,
    atomic_path,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
    write_shards,
)  # fmt: skip
from pallm.speech.stage import diarize_stage, speech_stage
from pallm.stages import Row, Stage, check_pipeline, run_stages
from pallm.teacher import local
from pallm.teacher.cache import public_location

STATE_DIR = ".pallm"
DATA_DIR = "data"
MEASURED_DIR = f"{STATE_DIR}/measured"
RECORDS_DIR = f"{STATE_DIR}/chunks"


@dataclass
class Chunk:
    """A slice of one corpus split, in id order: what one task processes and one cache entry holds."""

    corpus: str
    split: str
    key: str
    rows: list[Row]

    @property
    def stem(self) -> str:
        # Named by content, not position: a chunk keeps its name when others come and go.
        return f"{self.split}-{self.corpus}-{self.key[:16]}"


@dataclass
class Plan:
    """Everything a build will do, known before any audio is decoded."""

    config: BuildConfig
    chunks: list[Chunk]
    quarantined: list[Quarantined]
    stages: list[Stage]
    corpus_roots: dict[str, str]
    version: str
    code_version: str
    build_key: str

    @property
    def total_rows(self) -> int:
        return sum(len(c.rows) for c in self.chunks)


@dataclass
class ChunkResult:
    """What a chunk produced: its shards and the items it quarantined."""

    stem: str
    key: str
    corpus: str
    split: str
    rows: int
    shards: list[ShardInfo]
    quarantined: list[Quarantined]
    speakers: list[str] = field(default_factory=list)
    cached: bool = False
    #: the model loads that happened while this chunk ran, and those of its measuring pass (`Load.as_dict()`)
    loads: list[dict[str, Any]] = field(default_factory=list)
    #: seconds from the measuring task's start to its first clip entering the stages (None: cached)
    to_first_clip_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cached")
        for run_only in ("loads", "to_first_clip_s"):  # what this run did, not what the chunk holds
            d.pop(run_only)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChunkResult:
        return cls(
            **{k: d[k] for k in ("stem", "key", "corpus", "split", "rows", "speakers")},
            shards=[ShardInfo(**s) for s in d["shards"]],
            quarantined=[Quarantined(**q) for q in d["quarantined"]],
            cached=True,
        )


def build_stages(config: BuildConfig) -> list[Stage]:
    """The measuring stages a config asks for, checked (with the describing ones) against each other."""
    with_words = config.asr != "none"
    stages = [audio_stage(config.audio)]
    if with_words:
        stages.append(speech_stage(config.asr, config.speech))
        diarized = frozenset(c.name for c in config.corpora if not get_adapter(c.name).one_speaker_per_file)
        if config.speech.diarize_model and diarized:
            stages.append(diarize_stage(config.speech, diarized))
    stages.append(cue_stage(with_words))
    check_pipeline([*stages, *describe_stages(config, {})])
    return stages


def describe_stages(config: BuildConfig, norms: SpeakerNorms, probe: LexicalProbe | None = None) -> list[Stage]:
    """The describing stages, bound to the build's speaker statistics and lexical probe."""
    with_words = config.asr != "none"
    stages = [describe_stage(norms, with_words=with_words), lexical_stage(probe or {}, config.teacher.lexical_min_p)]
    if config.teacher.backend != "none":
        from pallm.teacher.stage import teacher_stage

        stages.append(teacher_stage(config.teacher, teacher_cache(config), with_words=with_words))
    return stages


def public_config(config: BuildConfig) -> dict[str, Any]:
    """The config as the manifest records it: no secret (a database URL's password) written down."""
    dumped = config.model_dump(mode="json")
    if dumped["teacher"]["cache"]:
        dumped["teacher"]["cache"] = public_location(dumped["teacher"]["cache"])
    return dumped


def teacher_cache(config: BuildConfig) -> str:
    """Where the teacher's answers are cached: teacher.cache, else a SQLite file inside the dataset folder."""
    assert config.out is not None
    return config.teacher.cache or str(config.out / STATE_DIR / "teacher.sqlite")


def close_stages(stages: Sequence[Stage]) -> None:
    """Release what stages opened on first use (models, the teacher's client and cache)."""
    for s in stages:
        close = getattr(s.process, "close", None)
        if callable(close):
            close()


def chunk_start(seconds: Sequence[float | None]) -> dict[str, Any]:
    """How long measuring tasks took from their start to their first clip (the cluster's and the task
    engine's overhead, model loads excluded since they happen later): over the chunks measured in this run."""
    ran = sorted(x for x in seconds if x is not None)
    if not ran:
        return {"chunks": 0}
    return {"chunks": len(ran), "median_s": ran[len(ran) // 2], "max_s": ran[-1]}


def taken_loads(stages: Sequence[Stage]) -> list[dict[str, Any]]:
    """The model loads the stages' workers recorded since they were last asked (see `pallm.resident`)."""
    logs = [getattr(s.process, "loads", None) for s in stages]
    return [x.as_dict() for log in logs if isinstance(log, LoadLog) for x in log.take()]


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout of this project."""
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / ".git").exists():
        return pallm.__version__
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=checkout,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{pallm.__version__}+g{commit}" if commit else pallm.__version__


def resolve_corpus(spec: CorpusSpec) -> tuple[Any, Path]:
    """The adapter and the path for a corpus spec; CorpusError says what to fix."""
    adapter = get_adapter(spec.name)
    path = spec.path
    if path is None:
        if adapter.default_path is None:
            raise CorpusError(f"corpus {spec.name!r} needs a path: --corpus {spec.name}=/path/to/{spec.name}")
        path = adapter.default_path()
    elif adapter.synthetic:
        pass  # the synthetic corpus is created where it is asked for
    elif adapter.path_is_file and not path.is_file():
        raise CorpusError(f"{spec.name} manifest {path} does not exist: check the path given to --corpus")
    elif not adapter.path_is_file and not path.is_dir():
        raise CorpusError(f"{spec.name} corpus folder {path} does not exist: check the path given to --corpus")
    return adapter, path.resolve()


def plan(config: BuildConfig, stages: Sequence[Stage] | None = None, *, hash_workers: int | None = None) -> Plan:
    """Scan every corpus, quarantine what cannot be ingested, hash the sources and cut chunks."""
    stages = list(stages) if stages is not None else build_stages(config)
    names = [c.name for c in config.corpora]
    if len(set(names)) != len(names):
        raise CorpusError(f"each corpus may be given once; got {names}")
    resolved = [(spec, *resolve_corpus(spec)) for spec in config.corpora]  # fail fast, before any work
    rows: list[Row] = []
    quarantined: list[Quarantined] = []
    roots: dict[str, str] = {}
    for spec, adapter, path in resolved:
        roots[spec.name] = str(path)
        options = adapter.options.model_validate(spec.options)
        found: list[Row] = []
        for item in adapter.scan(path, options):
            (quarantined if isinstance(item, Quarantined) else found).append(item)
        found.sort(key=lambda r: r["id"])
        rows.extend(_dedupe(found, quarantined)[: config.limit])
    _hash_sources(rows, quarantined, hash_workers or config.workers)
    rows = [r for r in rows if "source_sha256" in r]
    chunks = _cut_chunks(rows, config, stages)
    quarantined.sort(key=lambda q: (q.corpus, q.path, q.id or ""))
    # The version names the data (what went in and how it was processed); the build key adds the
    # code version, so new code re-renders the card without calling the same data a new version.
    version = _hash(
        {
            "config": config.fingerprint(),
            "chunks": [c.key for c in chunks],
            "describe": [s.fingerprint() for s in describe_stages(config, {})],
            "quarantined": [q.as_dict() for q in quarantined],
        }
    )[:12]
    code = code_version()
    build_key = _hash({"version": version, "code": code})
    return Plan(config, chunks, quarantined, stages, roots, version, code, build_key)


def _dedupe(rows: list[Row], quarantined: list[Quarantined]) -> list[Row]:
    seen: set[str] = set()
    kept = []
    for r in rows:
        if r["id"] in seen:
            quarantined.append(Quarantined(r["id"], r["corpus"], r["audio_path"], "ingest", "duplicate id"))
        else:
            seen.add(r["id"])
            kept.append(r)
    return kept


def _hash_sources(rows: list[Row], quarantined: list[Quarantined], workers: int) -> None:
    """Add `source_sha256` to each row; an unreadable file is quarantined here, before any chunk."""
    paths = sorted({r[SOURCE_KEY] for r in rows})

    def digest(p: str) -> str | OSError:
        try:
            return sha256_file(Path(p))
        except OSError as e:
            return e

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        digests = dict(zip(paths, pool.map(digest, paths), strict=True))
    for r in rows:
        d = digests[r[SOURCE_KEY]]
        if isinstance(d, OSError):
            why = "file not found" if isinstance(d, FileNotFoundError) else f"unreadable: {d.strerror}"
            quarantined.append(Quarantined(r["id"], r["corpus"], r["audio_path"], "ingest", why))
        else:
            r["source_sha256"] = d


def _cut_chunks(rows: list[Row], config: BuildConfig, stages: Sequence[Stage]) -> list[Chunk]:
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r["corpus"], r["split"])].append(r)
    fingerprint = {
        "stages": [s.fingerprint() for s in stages],
        "schema": SCHEMA_VERSION,
        "labels": LABEL_MAP_VERSION,
        "shards": config.shards.model_dump(mode="json"),
    }
    chunks = []
    for (corpus, split), group in sorted(groups.items()):
        group.sort(key=lambda r: r["id"])
        for part in _content_defined(group, config.shards.chunk_rows):
            content = [{k: v for k, v in r.items() if k != SOURCE_KEY} for r in part]
            chunks.append(Chunk(corpus, split, _hash({"f": fingerprint, "rows": content}), part))
    return chunks


def _content_defined(rows: list[Row], target: int) -> Iterator[list[Row]]:
    """Cut id-sorted rows into chunks whose boundaries depend on the ids, not on positions.

    A chunk ends after a row whose id hashes to 0 modulo `target` (so chunks hold `target` rows on
    average) or at `2 * target` rows. Adding or removing one utterance then changes one chunk, not
    every chunk after it, and the rest of the build stays cached.
    """
    part: list[Row] = []
    for r in rows:
        part.append(r)
        boundary = int.from_bytes(hashlib.sha256(r["id"].encode()).digest()[:8], "big") % target == 0
        if boundary or len(part) >= 2 * target:
            yield part
            part = []
    if part:
        yield part


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _record_path(out: Path, folder: str, stem: str) -> Path:
    return out / folder / f"{stem}.json"


def _cached(out: Path, folder: str, stem: str, key: str) -> ChunkResult | None:
    """The finished result under this key if its record and every file it names are intact."""
    try:
        result = ChunkResult.from_json(json.loads(_record_path(out, folder, stem).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if result.key != key:
        return None
    for s in result.shards:
        p = out / s.path
        if not p.is_file() or p.stat().st_size != s.bytes:
            return None
    return result


def cached_result(chunk: Chunk, out: Path) -> ChunkResult | None:
    """The measured result of this chunk if its record and file are intact."""
    return _cached(out, MEASURED_DIR, chunk.stem, chunk.key)


def _batches(rows: Sequence[Row], size: int) -> Iterator[list[Row]]:
    for first in range(0, len(rows), size):
        yield list(rows[first : first + size])


def measure_chunk(
    chunk: Chunk, stages: Sequence[Stage], out: Path, config: BuildConfig, started: float | None = None
) -> ChunkResult:
    """The measuring pass over one chunk, unless its cached result is intact: rows to .pallm/measured.
    `started`: when the task that runs it started (`time.time()`; default: now), to time its overhead."""
    started = time.time() if started is None else started
    cached = cached_result(chunk, out)
    if cached is not None:
        return cached
    quarantined: list[Quarantined] = []
    speakers: set[str] = set()
    batch = max(s.batch_size for s in stages)
    first_clip: list[float] = []

    def measured() -> Iterator[Row]:
        for rows in _batches(chunk.rows, batch):  # a batch at a time keeps memory flat on long chunks
            first_clip[:] = first_clip or [time.time()]
            done, bad = run_stages(rows, stages)
            quarantined.extend(bad)
            for r in done:
                speakers.add(r["speaker_id"])
                yield r

    files = write_shards(measured(), out / MEASURED_DIR, chunk.stem, max_bytes=2**62,
                         row_group_rows=config.shards.row_group_rows, rel_to=out)  # fmt: skip
    result = ChunkResult(chunk.stem, chunk.key, chunk.corpus, chunk.split, sum(s.rows for s in files), files,
                         quarantined, sorted(speakers), loads=taken_loads(stages),
                         to_first_clip_s=round(first_clip[0] - started, 3) if first_clip else None)  # fmt: skip
    write_json_atomic(_record_path(out, MEASURED_DIR, chunk.stem), result.to_json())
    return result


def speaker_norms(out: Path, measured: Sequence[ChunkResult]) -> SpeakerNorms:
    """Per-speaker cue statistics over every measured chunk (only the cue columns are read)."""
    columns = ["speaker_id", *normalize.Z_COLUMNS.values()]
    return normalize.speaker_norms(pq.read_table(out / s.path, columns=columns) for r in measured for s in r.shards)


def lexical_probe(out: Path, measured: Sequence[ChunkResult]) -> LexicalProbe:
    """The words-only probe over every measured chunk (only ids, labels and text are read)."""
    from pallm import lexical

    def tables() -> Iterator[pa.Table]:
        for r in measured:
            for s in r.shards:
                names = set(pq.read_schema(out / s.path).names)
                columns = ["id", "corpus", "speaker_id", "emotion", "transcript_ref"]
                yield pq.read_table(out / s.path, columns=columns + (["transcript"] if "transcript" in names else []))

    return lexical.probe(tables())


def describe_key(
    measured: ChunkResult, stages: Sequence[Stage], norms: SpeakerNorms, out: Path, probe: LexicalProbe | None = None
) -> str:
    """Cache key of a chunk's describing pass: its measured rows, the stages, its speakers' statistics
    and its corpus's lexical probe."""
    corpus_probe = (probe or {}).get(measured.corpus)
    lexical = None
    if corpus_probe is not None:  # the verdicts on this chunk's rows: a retrained probe may leave them as they were
        ids = [i for s in measured.shards for i in pq.read_table(out / s.path, columns=["id"])["id"].to_pylist()]
        lexical = corpus_probe.digest(ids)
    return _hash({"measured": measured.key, "stages": [s.fingerprint() for s in stages],
                  "norms": normalize.digest(norms, measured.speakers), "lexical": lexical})  # fmt: skip


#: Items a stage of this name quarantined are retried when the chunk runs again (an endpoint may
#: have recovered); the answers they did get are cached, so the retry asks only for the rest.
RETRIED_STAGES = ("teacher",)


def describe_chunk(
    measured: ChunkResult,
    stages: Sequence[Stage],
    norms: SpeakerNorms,
    out: Path,
    config: BuildConfig,
    probe: LexicalProbe | None = None,
) -> ChunkResult:
    """The describing pass over one measured chunk, unless cached: its shards in data/."""
    key = describe_key(measured, stages, norms, out, probe)
    cached = _cached(out, RECORDS_DIR, measured.stem, key)
    if cached is not None and not any(q.stage in RETRIED_STAGES for q in cached.quarantined):
        cached.loads, cached.to_first_clip_s = list(measured.loads), measured.to_first_clip_s
        return cached
    quarantined = list(measured.quarantined)
    batch_size = max(config.shards.row_group_rows, *(s.batch_size for s in stages))

    def described() -> Iterator[Row]:
        for info in measured.shards:
            for batch in pq.ParquetFile(out / info.path).iter_batches(batch_size=batch_size):
                done, bad = run_stages(batch.to_pylist(), stages)
                quarantined.extend(bad)
                for r in done:
                    r["schema_version"] = SCHEMA_VERSION
                    validate_row(r, COLUMN_NAMES)
                    yield r

    shards = write_shards(
        described(),
        out / DATA_DIR,
        measured.stem,
        max_bytes=int(config.shards.max_shard_mb * 2**20),
        row_group_rows=config.shards.row_group_rows,
        rel_to=out,
    )
    result = ChunkResult(measured.stem, key, measured.corpus, measured.split, sum(s.rows for s in shards), shards,
                         quarantined, measured.speakers, loads=[*measured.loads, *taken_loads(stages)],
                         to_first_clip_s=measured.to_first_clip_s)  # fmt: skip
    write_json_atomic(_record_path(out, RECORDS_DIR, measured.stem), result.to_json())
    return result


def run_chunks(plan: Plan, out: Path, mapper: Callable[..., Iterable[Any]] = map) -> list[ChunkResult]:
    """Both passes over every chunk with the given `map` (the built-in one, or a thread pool's)."""
    try:
        measured = list(mapper(lambda c: measure_chunk(c, plan.stages, out, plan.config), plan.chunks))
    finally:
        close_stages(plan.stages)  # Whisper's memory is the teacher's now
    norms = speaker_norms(out, measured)
    probe = lexical_probe(out, measured)
    with local.serving(plan.config.teacher, log=out / STATE_DIR / "teacher-server.log") as teacher:
        config = plan.config.model_copy(update={"teacher": teacher})
        stages = describe_stages(config, norms, probe)
        try:
            return list(mapper(lambda m: describe_chunk(m, stages, norms, out, config, probe), measured))
        finally:
            close_stages(stages)


def is_finalized(plan: Plan, out: Path, results: Sequence[ChunkResult] | None = None) -> bool:
    """Whether the dataset folder already holds exactly this build (same build key, files intact) and,
    given the chunk results, exactly their shards and quarantined items (a retried item may have changed)."""
    try:
        manifest = read_manifest(out)
    except (OSError, ValueError):
        return False
    if manifest.get("build_key") != plan.build_key or not (out / "README.md").is_file():
        return False
    if results is not None:
        shards = sorted((s.path, s.sha256) for r in results for s in r.shards)
        if shards != sorted((s["path"], s["sha256"]) for s in manifest.get("shards", [])):
            return False
        if manifest.get("quarantined") != len(plan.quarantined) + sum(len(r.quarantined) for r in results):
            return False
    return all((out / s["path"]).is_file() for s in manifest.get("shards", []))


def write_quarantine(out: Path, items: Sequence[Quarantined]) -> None:
    """Write the quarantine table atomically."""
    table = pa.Table.from_pylist([q.as_dict() for q in items], schema=QUARANTINE_SCHEMA)
    with atomic_path(out / "quarantine.parquet") as tmp:
        pq.write_table(table, tmp)


_SHARD_NAME = re.compile(r"^[\w.-]+-[0-9a-f]{16}(-p\d+)?\.parquet$")


def check_output(out: Path) -> None:
    """Refuse an output that is a file, or a non-empty folder that holds no pallm dataset.

    A build deletes stale shards and rewrites README.md in its folder, so it must never adopt a
    folder of the user's by mistake.
    """
    if out.exists() and not out.is_dir():
        raise CorpusError(f"output {out} is a file; --out must name a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / STATE_DIR).is_dir():
        raise CorpusError(f"output folder {out} is not empty and holds no pallm dataset: choose another --out")


def prepare_output(out: Path) -> None:
    """Claim `out` for a dataset (see `check_output`)."""
    check_output(out)
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)


def remove_stale(out: Path, results: Sequence[ChunkResult]) -> list[str]:
    """Delete shards, chunk records and temporary files that the current build does not own."""
    keep_shards = {s.path for r in results for s in r.shards}
    keep_stems = {r.stem for r in results}
    removed = []
    for p in sorted((out / DATA_DIR).glob("*")):
        rel = f"{DATA_DIR}/{p.name}"
        ours = p.name.startswith(TMP_PREFIX) or _SHARD_NAME.match(p.name)
        if p.is_file() and ours and rel not in keep_shards:
            p.unlink()
            removed.append(rel)
    for folder in (RECORDS_DIR, MEASURED_DIR):  # records and measured rows of chunks no longer planned
        for p in sorted((out / folder).glob("*")) if (out / folder).is_dir() else []:
            if p.is_file() and p.name.split(".")[0] not in keep_stems:
                p.unlink()
    for p in out.glob(TMP_PREFIX + "*"):
        p.unlink()
    return removed


def finalize(
    plan: Plan,
    results: Sequence[ChunkResult],
    out: Path,
    *,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Write the quarantine table, the card and the manifest, then remove what the build no longer owns.

    The manifest is written after everything it describes; stale shards go only once it is in
    place, so a reader never finds a manifest naming deleted files. When the folder already holds
    this build (a rerun), only the idempotent steps run again: cleanup and the card index.
    """
    results = sorted(results, key=lambda r: r.stem)
    unchanged = is_finalized(plan, out, results)
    if unchanged:
        manifest = read_manifest(out)
        card = (out / "README.md").read_text(encoding="utf-8")
    else:
        quarantined = [*plan.quarantined, *(q for r in results for q in r.quarantined)]
        write_quarantine(out, quarantined)
        manifest = {
            "name": plan.config.name,
            "version": plan.version,
            "build_key": plan.build_key,
            "schema_version": SCHEMA_VERSION,
            "label_map_version": LABEL_MAP_VERSION,
            "code_version": plan.code_version,
            "config": public_config(plan.config),
            "config_hash": plan.config.fingerprint(),
            "stages": {
                s.name: {"version": s.version, "fingerprint": s.fingerprint()}
                for s in [*plan.stages, *describe_stages(plan.config, {})]
            },
            "corpus_roots": plan.corpus_roots,
            "run_id": run_id,
            "rows": sum(r.rows for r in results),
            "quarantined": len(quarantined),
            "shards": [asdict(s) | {"split": r.split, "corpus": r.corpus} for r in results for s in r.shards],
            # How often each worker loaded each model for this build: once per worker, not per chunk.
            "model_loads": summarize_loads([x for r in results for x in r.loads]),
            "chunk_start": chunk_start([r.to_first_clip_s for r in results]),
        }
        card = cards.render_card(out, manifest, quarantined)
        write_bytes_atomic(out / "README.md", card.encode())
        write_json_atomic(out / "manifest.json", manifest)
    removed = remove_stale(out, results)
    if plan.config.cards_index is not None:
        cards.register(plan.config.cards_index, out, manifest, card)
    return {"manifest": manifest, "removed": removed, "card": card, "unchanged": unchanged}


__all__ = [
    "Chunk", "ChunkResult", "CorpusError", "ItemError", "Plan", "build_stages", "cached_result", "check_output",
    "close_stages", "describe_chunk", "describe_stages", "finalize", "is_finalized", "lexical_probe",
    "measure_chunk", "plan", "prepare_output", "run_chunks", "speaker_norms",
]  # fmt: skip
