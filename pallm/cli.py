"""The `pallm` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from pallm.review.cli import app as review_app

app = typer.Typer(
    help="PALLM pipeline: build paralinguistic speech datasets and train speech LLMs on them.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command("build-dataset")
def build_dataset(
    corpus: Annotated[
        list[str] | None,
        typer.Option(
            "--corpus",
            help="NAME=PATH, repeatable (ravdess, iemocap, expresso, manifest); default: the built-in synthetic corpus",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: datasets/<name>)")] = None,
    asr: Annotated[
        str | None,
        typer.Option(
            help="Whisper model: tiny.en (default) or base (installed offline), a CTranslate2 folder, "
            "a hub name, or none"
        ),
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            help="teacher: none, rules (templates from the cues), openai (any OpenAI-compatible endpoint; "
            "key from $OPENAI_API_KEY) or local (SmolLM2, served on loopback for the build)"
        ),
    ] = None,
    teacher_base_url: Annotated[
        str | None, typer.Option(help="openai teacher: endpoint, e.g. http://127.0.0.1:8000/v1 (default: OpenAI)")
    ] = None,
    teacher_model: Annotated[str | None, typer.Option(help="openai teacher: model name")] = None,
    limit: Annotated[int | None, typer.Option(help="at most N utterances per corpus")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML or JSON config file; flags override it")] = None,
    name: Annotated[str | None, typer.Option(help="dataset name")] = None,
    workers: Annotated[
        int | None, typer.Option(help="chunks processed at once: threads, or local dask/ray workers (default: CPUs)")
    ] = None,
    runner: Annotated[
        str | None, typer.Option(help="where chunks run: serial (this process, default), dask or ray")
    ] = None,
    cluster: Annotated[
        str | None, typer.Option(help="dask/ray: address of a running cluster (default: start a local one)")
    ] = None,
    cards_index: Annotated[
        Path | None, typer.Option(help="folder keeping a copy of every card and an index (default: data_cards)")
    ] = None,
) -> None:
    """Build Parquet shards and a data card from speech corpora, through the build-dataset flow."""
    from pydantic import ValidationError

    from flows.runners import check_runner
    from pallm.config import BuildConfig, CorpusSpec
    from pallm.corpora import CorpusError
    from pallm.pipeline import build_stages, check_output, resolve_corpus

    try:
        cfg = BuildConfig.load(
            config, corpora=[CorpusSpec.parse(c) for c in corpus] if corpus else None, asr=asr, teacher=teacher,
            teacher_base_url=teacher_base_url, teacher_model=teacher_model, limit=limit, name=name,
            workers=workers, runner=runner, cluster=cluster, out=out,
        )  # fmt: skip
        for spec in cfg.corpora:  # fail before Prefect starts
            resolve_corpus(spec)
        build_stages(cfg)  # model folders: a missing or incomplete one is named now
        check_output(cfg.out)
        check_runner(cfg)
    except ValidationError as e:
        _fail("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()))
    except (CorpusError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    from flows.build_dataset import build_dataset as flow

    # The flow gets what the user said (flags and the config file), so it merges them exactly as here.
    summary = flow(
        corpora=corpus, out=str(cfg.out), asr=asr, teacher=teacher, teacher_base_url=teacher_base_url,
        teacher_model=teacher_model, limit=limit,
        config=str(config.resolve()) if config else None, name=name, workers=workers, runner=runner,
        cluster=cluster, cards_index=str(cards_index or cfg.cards_index or "data_cards"),
    )  # fmt: skip
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"data card: {Path(summary['out']) / 'README.md'}", err=True)


@app.command()
def train(
    dataset: Annotated[Path, typer.Option(help="a built dataset folder (pallm build-dataset)")],
    out: Annotated[Path, typer.Option(help="run folder: checkpoints, models, evaluation, report")],
    config: Annotated[
        Path | None,
        typer.Option(help="YAML or JSON training config, e.g. configs/train-tiny.yaml (default: its values)"),
    ] = None,
) -> None:
    """Train a speech LLM on a dataset (SFT, then multi-task RL) and evaluate it, through the train-pallm flow.
    Rerun the same command after a crash: finished steps are skipped and training resumes from its checkpoint."""
    from pydantic import ValidationError

    from pallm.train.config import TrainConfig
    from pallm.train.steps import start_run

    try:
        start_run(dataset, out, TrainConfig.load(config))  # fail before Prefect starts
    except ValidationError as e:
        _fail("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()))
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    from flows.train_pallm import train_pallm

    summary = train_pallm(dataset=str(dataset), out=str(out), config=str(config.resolve()) if config else None)
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"report: {summary['report']}", err=True)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Option(help="a finished training run folder (pallm train)")],
    dataset: Annotated[Path, typer.Option(help="a built dataset folder to evaluate on (pallm build-dataset)")],
    out: Annotated[Path, typer.Option(help="folder for <system>.json, the answers and report.md")],
    splits: Annotated[str | None, typer.Option(help="comma-separated splits (default: all of the dataset's)")] = None,
    limit: Annotated[int | None, typer.Option(help="at most N clips per split, a seeded random sample")] = None,
) -> None:
    """Evaluate every system of a finished run (baselines refitted on the run's training split, each trained
    model, with swapped audio and intervals) on another dataset, through the evaluate-pallm flow."""
    from pallm.train.steps import evaluation_config

    chosen = [s.strip() for s in splits.split(",") if s.strip()] if splits else None
    try:
        evaluation_config(run, dataset, chosen, limit)  # fail before Prefect starts
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    from flows.train_pallm import evaluate_pallm

    summary = evaluate_pallm(run=str(run), dataset=str(dataset), out=str(out), splits=chosen, limit=limit)
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"report: {summary['report']}", err=True)


@app.command()
def listen(
    clips: Annotated[list[Path], typer.Argument(help="audio files (WAV, FLAC, MP3, M4A, ...)")],
    model: Annotated[Path, typer.Option(help="a training run folder (its final model) or a saved model folder")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per clip and line")] = False,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="longest answer in tokens (default: the run's evaluation setting, else 128)")
    ] = None,
) -> None:
    """Run a trained model on audio files: its reasoning, cues, sentiment and emotion, and a reply to the speaker.
    A file that cannot be read gets an error line; the other clips are still answered (exit status 1)."""
    from pallm.train.listen import listen as answer
    from pallm.train.listen import resolve_model

    try:
        resolved = resolve_model(model, max_new_tokens)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    failed = 0
    for r in answer(resolved, clips):
        if "error" in r:
            failed += 1
            typer.secho(f"error: {r['path']}: {r['error']}", fg=typer.colors.RED, err=True)
        if as_json:
            typer.echo(json.dumps(r))
        if as_json or "error" in r:
            continue
        typer.echo(f"{r['path']}")
        typer.echo(f"  reasoning: {r['reasoning']}" + ("" if r["parsed"] else "  (not in the answer format)"))
        typer.echo(f"  cues:      {'; '.join(r['cues']) or 'none'}")
        typer.echo(f"  sentiment: {r['sentiment'] or '–'}")
        typer.echo(f"  emotion:   {r['emotion'] or '–'}")
        typer.echo(f"  reply:     {r['reply']}")
    if failed:
        raise typer.Exit(1)


@app.command()
def corpora() -> None:
    """List the corpus adapters with their licences."""
    from pallm.corpora import ADAPTERS

    for a in ADAPTERS.values():
        typer.echo(f"{a.name:10s} {a.license:28s} {a.description}")


@app.command()
def labels() -> None:
    """Print the label map (corpus label -> unified emotion -> sentiment)."""
    from pallm.labels import LABEL_MAP, LABEL_MAP_VERSION

    typer.echo(f"label map version {LABEL_MAP_VERSION}")
    for m in LABEL_MAP:
        typer.echo(f"{m.corpus:9s} {m.native:12s} -> {m.emotion:11s} {m.sentiment or '(none)':9s} {m.note}")


@app.command()
def verify(dataset: Annotated[Path, typer.Argument(help="dataset folder")]) -> None:
    """Check every shard of a built dataset against the checksums in its manifest."""
    from pallm.shards import sha256_file

    try:
        manifest = json.loads((dataset / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        _fail(f"{dataset} has no readable manifest.json: {e}")
    bad = [
        s["path"]
        for s in manifest["shards"]
        if not (dataset / s["path"]).is_file() or sha256_file(dataset / s["path"]) != s["sha256"]
    ]
    for p in bad:
        typer.echo(f"corrupt or missing: {p}")
    typer.echo(f"{len(manifest['shards']) - len(bad)}/{len(manifest['shards'])} shards intact, {manifest['rows']} rows")
    if bad:
        raise typer.Exit(1)


app.add_typer(review_app, name="review")


@app.command()
def demo(
    teacher: Annotated[
        str, typer.Option(help="local (SmolLM2, about 18 min on two cores) or rules (templates, about 4 min)")
    ] = "local",
    prefect_port: Annotated[int, typer.Option(help="Prefect UI and API port (another if taken)")] = 4200,
    ui_port: Annotated[int, typer.Option(help="annotation UI port (another if taken)")] = 8000,
    work: Annotated[Path, typer.Option(help="folder for the dataset, run, Prefect database and logs")] = Path("demo"),
    build_config: Annotated[Path | None, typer.Option(help="build config (default: all the built-in corpus)")] = None,
    train_config: Annotated[
        Path | None, typer.Option(help="training config (default: configs/train-demo.yaml, the offline backbone)")
    ] = None,
    exit_when_done: Annotated[bool, typer.Option(help="stop everything once the training is done")] = False,
) -> None:
    """The whole product here, in one go: a Prefect server and worker, build-dataset on the built-in corpus,
    a review sample in the annotation UI, a short train-pallm of the offline backbone; then where to look. Ctrl-C
    stops it all."""
    if teacher not in ("local", "rules"):
        _fail("--teacher must be local or rules")
    from flows.demo import run_demo

    try:
        run_demo(teacher=teacher, work=work, prefect_port=prefect_port, ui_port=ui_port, build_config=build_config,
                 train_config=train_config, keep_serving=not exit_when_done)  # fmt: skip
    except RuntimeError as e:
        _fail(str(e))


@app.command()
def serve() -> None:
    """Register the deployments with the Prefect server and run them when asked (Ctrl-C stops)."""
    from flows.serve import main

    main()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SIGTERM's default is to die on the spot, which skips the atexit hook that stops Prefect's temporary
    # server (and every `finally`); ending as an exit does not.
    raise SystemExit(128 + signum)


def main() -> None:
    """Entry point of the `pallm` console script."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Offline first: no usage reports from an embedded Prefect server unless the user opts in.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A first run without a server creates the embedded database, which can outlast Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")  # pyannote (whisperx's VAD) reports usage otherwise
    # whisperx announces its VAD and Lightning the in-memory upgrade of that VAD's checkpoint on every load;
    # a handler already in place stops whisperx from installing its own INFO-level console handler.
    logging.getLogger("whisperx").addHandler(logging.NullHandler())
    for noisy in ("whisperx", "lightning.pytorch.utilities.migration.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app()


if __name__ == "__main__":
    sys.exit(main())
