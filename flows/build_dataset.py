"""The `build-dataset` flow: plan, map the chunk task over the corpus, finalise, publish artifacts.

All the work happens in `pallm.pipeline`; this module only decides what runs where, retries what
may fail transiently, reports progress and publishes the card as Prefect artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from pallm import pipeline
from pallm.config import BuildConfig, CorpusSpec
from pallm.cues.normalize import SpeakerNorms
from pallm.stages import Stage


# The chunk records are the cache (keyed by content), so Prefect's own input hashing is not needed.
@task(name="process-chunk", task_run_name="chunk {chunk.stem}", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def process_chunk(chunk: pipeline.Chunk, stages: list[Stage], config: BuildConfig) -> pipeline.ChunkResult:
    """The measuring pass over one chunk: audio, speech, cues (or its cached result)."""
    return pipeline.measure_chunk(chunk, stages, config.out, config)


@task(name="describe-chunk", task_run_name="describe {measured.stem}", retries=2, retry_delay_seconds=2,
      cache_policy=NO_CACHE)  # fmt: skip
def describe_chunk(
    measured: pipeline.ChunkResult, stages: list[Stage], norms: SpeakerNorms, config: BuildConfig
) -> pipeline.ChunkResult:
    """The describing pass over one measured chunk: z-scores, cue words, shards (or its cached result)."""
    return pipeline.describe_chunk(measured, stages, norms, config.out, config)


def make_config(
    corpora: list[str] | None,
    out: str | None,
    asr: str | None,
    teacher: str | None,
    limit: int | None,
    config: str | None,
    name: str | None,
    workers: int | None,
    cards_index: str | None,
) -> BuildConfig:
    """Merge a config file (optional) with the flow parameters that were given."""
    return BuildConfig.load(
        Path(config) if config else None,
        corpora=[CorpusSpec.parse(c) for c in corpora] if corpora else None,
        out=Path(out) if out else None,
        asr=asr,
        teacher=teacher,
        limit=limit,
        name=name,
        workers=workers,
        cards_index=Path(cards_index) if cards_index else None,
    )


@flow(name="build-dataset", log_prints=True, persist_result=False)
def build_dataset(
    corpora: list[str] | None = None,
    out: str | None = None,
    asr: str | None = None,
    teacher: str | None = None,
    limit: int | None = None,
    config: str | None = None,
    name: str | None = None,
    workers: int | None = None,
    cards_index: str | None = None,
) -> dict[str, Any]:
    """Build a versioned Parquet dataset with a data card from speech corpora.

    `corpora` takes the CLI's `NAME=PATH` strings (e.g. `["ravdess=/data/RAVDESS"]`); with none,
    the built-in synthetic corpus is used. Returns a summary: rows, quarantined, output folder.
    """
    log = get_run_logger()
    cfg = make_config(corpora, out, asr, teacher, limit, config, name, workers, cards_index)
    plan = pipeline.plan(cfg)
    pipeline.prepare_output(cfg.out)
    log.info(
        "planned %d utterances in %d chunks (%d quarantined at ingest) -> %s",
        plan.total_rows, len(plan.chunks), len(plan.quarantined), cfg.out,
    )  # fmt: skip
    progress = create_progress_artifact(0.0, description=f"chunks of {cfg.name} measured, then described")
    total = 2 * max(1, len(plan.chunks))
    measured: list[pipeline.ChunkResult] = []
    results: list[pipeline.ChunkResult] = []
    # quote(): Prefect need not walk every row of a chunk looking for futures to wait on.
    with ThreadPoolTaskRunner(max_workers=cfg.workers) as runner:
        shared = {"stages": quote(plan.stages), "config": quote(cfg)}
        futures = [runner.submit(process_chunk, {"chunk": quote(c), **shared}) for c in plan.chunks]
        for fut in as_completed(futures):
            measured.append(fut.result())
            update_progress_artifact(progress, 100.0 * len(measured) / total)
        norms = pipeline.speaker_norms(cfg.out, measured)
        shared = {"stages": quote(pipeline.describe_stages(cfg, norms)), "norms": quote(norms), "config": quote(cfg)}
        futures = [runner.submit(describe_chunk, {"measured": quote(m), **shared}) for m in measured]
        for fut in as_completed(futures):
            results.append(fut.result())
            update_progress_artifact(progress, 100.0 * (len(measured) + len(results)) / total)
    cached = sum(r.cached for r in measured)
    log.info("%d chunks done (%d measurements reused from cache)", len(results), cached)
    final = pipeline.finalize(plan, results, cfg.out, run_id=str(flow_run.get_id() or ""))
    if final["unchanged"]:
        log.info("nothing changed since the last build of %s", cfg.out)
    manifest = final["manifest"]
    publish(cfg.out, manifest)
    return {
        "out": str(cfg.out.resolve()),
        "version": manifest["version"],
        "rows": manifest["rows"],
        "quarantined": manifest["quarantined"],
        "chunks": len(results),
        "chunks_cached": cached,
    }


def publish(out: Path, manifest: dict[str, Any]) -> None:
    """The data card and a count table as Prefect artifacts."""
    key = f"data-card-{_slug(manifest['name'])}"
    create_markdown_artifact(
        (out / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[-1], key=key,
        description=f"Data card of {manifest['name']} version {manifest['version']}",
    )  # fmt: skip
    counts: dict[tuple[str, str], int] = {}
    for s in manifest["shards"]:
        counts[(s["corpus"], s["split"])] = counts.get((s["corpus"], s["split"]), 0) + s["rows"]
    create_table_artifact(
        [{"corpus": c, "split": s, "utterances": n} for (c, s), n in sorted(counts.items())]
        + [{"corpus": "(quarantined)", "split": "", "utterances": manifest["quarantined"]}],
        key=f"counts-{_slug(manifest['name'])}",
        description="Utterances per corpus and split",
    )


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "dataset"
