"""The `build-dataset` flow: plan, map the chunk task over the corpus, finalise, publish artifacts.

All the work happens in `pallm.pipeline`; this module only decides what runs where, retries what
may fail transiently, reports progress and publishes the card as Prefect artifacts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
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
from prefect.context import TaskRunContext
from prefect.futures import as_completed
from prefect.runtime import flow_run

from flows.runners import asking_for_gpus, keeping_models, task_runner, teacher_share
from pallm import pipeline
from pallm.config import BuildConfig, CorpusSpec
from pallm.cues.normalize import SpeakerNorms
from pallm.lexical import LexicalProbe
from pallm.resident import summarize_loads
from pallm.stages import Stage
from pallm.teacher import local


# The chunk records are the cache (keyed by content), so Prefect's own input hashing is not needed.
@task(name="process-chunk", task_run_name="chunk {chunk.stem}", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def process_chunk(chunk: pipeline.Chunk, stages: list[Stage], config: BuildConfig) -> pipeline.ChunkResult:
    """The measuring pass over one chunk: audio, speech, cues (or its cached result)."""
    run = TaskRunContext.get()
    start = run.task_run.start_time if run is not None else None  # set by the engine, on the worker
    return pipeline.measure_chunk(chunk, stages, config.out, config, start.timestamp() if start else None)


@task(name="describe-chunk", task_run_name="describe {measured.stem}", retries=2, retry_delay_seconds=2,
      cache_policy=NO_CACHE)  # fmt: skip
def describe_chunk(
    measured: pipeline.ChunkResult, stages: list[Stage], norms: SpeakerNorms, probe: LexicalProbe, config: BuildConfig
) -> pipeline.ChunkResult:
    """The describing pass over one measured chunk: z-scores, cue words, lexical probe, teacher, shards."""
    return pipeline.describe_chunk(measured, stages, norms, config.out, config, probe)


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
    teacher_base_url: str | None = None,
    teacher_model: str | None = None,
    runner: str | None = None,
    cluster: str | None = None,
) -> BuildConfig:
    """Merge a config file (optional) with the flow parameters that were given."""
    return BuildConfig.load(
        Path(config) if config else None,
        corpora=[CorpusSpec.parse(c) for c in corpora] if corpora else None,
        out=Path(out) if out else None,
        asr=asr,
        teacher=teacher,
        teacher_base_url=teacher_base_url,
        teacher_model=teacher_model,
        limit=limit,
        name=name,
        workers=workers,
        runner=runner,
        cluster=cluster,
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
    teacher_base_url: str | None = None,
    teacher_model: str | None = None,
    runner: str | None = None,
    cluster: str | None = None,
    train: str | None = None,
    train_parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a versioned Parquet dataset with a data card from speech corpora.

    `corpora` takes the CLI's `NAME=PATH` strings (e.g. `["ravdess=/data/RAVDESS"]`); with none,
    the built-in synthetic corpus is used. `teacher` is none, rules, openai (with `teacher_base_url`
    and `teacher_model`) or local. `runner` is serial (threads here), dask or ray, on the cluster at
    `cluster` or a local one of `workers` processes. `train` names a train-pallm deployment (e.g.
    "train-pallm/gpu") to start on the finished dataset, on that deployment's own infrastructure, with
    `train_parameters` added (default run folder: runs/<name>-<version> beside the datasets folder).
    Returns a summary: rows, quarantined, output folder, and the training run started.
    """
    log = get_run_logger()
    cfg = make_config(corpora, out, asr, teacher, limit, config, name, workers, cards_index, teacher_base_url,
                      teacher_model, runner, cluster)  # fmt: skip
    plan = pipeline.plan(cfg)
    pipeline.prepare_output(cfg.out)
    log.info(
        "planned %d utterances in %d chunks (%d quarantined at ingest) -> %s, on %s",
        plan.total_rows, len(plan.chunks), len(plan.quarantined), cfg.out, cfg.runner,
    )  # fmt: skip
    progress = create_progress_artifact(0.0, description=f"chunks of {cfg.name} measured, then described")
    total = 2 * max(1, len(plan.chunks))
    measured: list[pipeline.ChunkResult] = []
    results: list[pipeline.ChunkResult] = []
    # No quote() around the arguments: Dask's serialisation turns it into a plain tuple on the worker.
    with task_runner(cfg) as runner, keeping_models(cfg, runner) as processes:
        shared = {"stages": plan.stages, "config": cfg}
        try:
            with asking_for_gpus(cfg):
                futures = [runner.submit(process_chunk, {"chunk": c, **shared}) for c in plan.chunks]
            for fut in as_completed(futures):
                measured.append(fut.result())
                update_progress_artifact(progress, 100.0 * len(measured) / total)
        finally:
            pipeline.close_stages(plan.stages)  # in this process: Whisper's memory is the teacher's now
        norms = pipeline.speaker_norms(cfg.out, measured)
        probe = pipeline.lexical_probe(cfg.out, measured)
        with local.serving(cfg.teacher, log=cfg.out / pipeline.STATE_DIR / "teacher-server.log") as teacher_cfg:
            per_process, at_once = teacher_share(teacher_cfg.concurrency, processes)
            described = cfg.model_copy(update={"teacher": teacher_cfg.model_copy(update={"concurrency": per_process})})
            stages = pipeline.describe_stages(described, norms, probe)
            shared = {"stages": stages, "norms": norms, "probe": probe, "config": described}
            try:
                for result in bounded(runner, describe_chunk, [{"measured": m, **shared} for m in measured], at_once):
                    results.append(result)
                    update_progress_artifact(progress, 100.0 * (len(measured) + len(results)) / total)
            finally:
                pipeline.close_stages(stages)
    cached = sum(r.cached for r in measured)
    log.info("%d chunks done (%d measurements reused from cache)", len(results), cached)
    for x in summarize_loads([load for r in results for load in r.loads]):
        log.info("%s loaded %s %d time(s), %.1f s in all", x["worker"], x["model"], x["loads"], x["seconds"])
    start = pipeline.chunk_start([r.to_first_clip_s for r in results])
    if start["chunks"]:
        log.info("chunk tasks: %.2f s from start to first clip (median; %.2f s at most)", start["median_s"],
                 start["max_s"])  # fmt: skip
    for s in stages:
        if s.name == "teacher" and hasattr(s.process, "stats"):
            log.info("teacher: %s", s.process.stats)
    final = pipeline.finalize(plan, results, cfg.out, run_id=str(flow_run.get_id() or ""))
    if final["unchanged"]:
        log.info("nothing changed since the last build of %s", cfg.out)
    manifest = final["manifest"]
    publish(cfg.out, manifest)
    summary = {
        "out": str(cfg.out.resolve()),
        "version": manifest["version"],
        "rows": manifest["rows"],
        "quarantined": manifest["quarantined"],
        "chunks": len(results),
        "chunks_cached": cached,
    }
    if train:
        summary["training"] = start_training(train, cfg.out.resolve(), manifest, train_parameters or {})
    return summary


def bounded(runner: Any, fn: Any, parameters: list[dict[str, Any]], at_once: int | None) -> Iterator[Any]:
    """Submit `fn` once per parameter set, with at most `at_once` runs in flight (all at once for None), and
    yield their results as they finish."""
    waiting = iter(parameters)
    pending = {runner.submit(fn, p) for p in itertools.islice(waiting, at_once or len(parameters))}
    while pending:
        done = next(as_completed(pending))
        pending.remove(done)
        pending.update(runner.submit(fn, p) for p in itertools.islice(waiting, 1))
        yield done.result()


def start_training(deployment: str, dataset: Path, manifest: dict[str, Any], parameters: dict[str, Any]) -> str:
    """Queue a run of a train-pallm deployment on the dataset and return its id at once: the training runs on
    the deployment's work pool (a GPU pool, say), not in this process. The default run folder is named by the
    dataset's version, so a rebuild that changed nothing resumes (and so skips) the same training run."""
    from prefect.deployments import run_deployment

    default_out = dataset.parent.parent / "runs" / f"{manifest['name']}-{manifest['version']}"
    params = {"dataset": str(dataset), "out": str(default_out), **parameters}
    run = run_deployment(deployment, parameters=params, timeout=0, as_subflow=False,
                         tags=["pallm", f"dataset:{manifest['name']}-{manifest['version']}"])  # fmt: skip
    get_run_logger().info("started %s (flow run %s) on %s, into %s", deployment, run.name, dataset, params["out"])
    return str(run.id)


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
