"""`pallm review ...`: users, import, the web app, export. Every command takes `--db URL`."""

from __future__ import annotations

import getpass
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from pallm.review.db import DB_ENV

app = typer.Typer(
    help="Review the teacher's rationales and replies in the annotation UI.", no_args_is_help=True,
    add_completion=False,
)  # fmt: skip
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help=f"review database URL: sqlite:///FILE or postgresql://... (default: ${DB_ENV}, "
        "else ~/.local/share/pallm/review.sqlite)",
    ),
]  # fmt: skip


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _password() -> str:
    """From standard input: asked twice on a terminal, else the first line."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            _fail("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


@app.command("add-user")
def add_user(
    name: Annotated[str, typer.Argument(help="login name")],
    role: Annotated[str, typer.Option(help="annotator, reviewer or admin")] = "annotator",
    db: DbOption = None,
) -> None:
    """Create a user (or reset an existing user's role and password); the password is read from standard input."""
    from pallm.review import auth
    from pallm.review.db import open_db

    password = _password()
    with open_db(db) as sessions, sessions() as s:
        try:
            auth.add_user(s, name, role, password)
        except ValueError as e:
            _fail(str(e))
    typer.echo(f"user {name} ({role}) ready")


@app.command("import")
def import_(
    dataset: Annotated[Path, typer.Argument(help="dataset folder written by `pallm build-dataset`")],
    sample: Annotated[int, typer.Option(help="stratified sample size (by corpus and emotion)")] = 100,
    overlap: Annotated[int, typer.Option(help="annotators per item")] = 1,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    db: DbOption = None,
) -> None:
    """Import a stratified sample of a dataset plus every item the pipeline flagged."""
    from pallm.review.db import open_db
    from pallm.review.importer import import_dataset

    if not (dataset / "manifest.json").is_file():
        _fail(f"{dataset} is not a built dataset (no manifest.json)")
    with open_db(db) as sessions, sessions() as s:
        try:
            result = import_dataset(s, dataset, sample=sample, overlap=overlap, seed=seed)
        except ValueError as e:
            _fail(str(e))
    typer.echo(json.dumps(asdict(result), indent=2))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    db: DbOption = None,
) -> None:
    """Run the annotation UI (Ctrl-C stops)."""
    import uvicorn

    from annotation_ui.app import create_app

    typer.echo(f"annotation UI on http://{host}:{port}/", err=True)
    uvicorn.run(create_app(db), host=host, port=port, log_level="warning", access_log=False)


@app.command()
def export(
    dataset: Annotated[Path, typer.Argument(help="dataset folder the items came from")],
    db: DbOption = None,
) -> None:
    """Write the decisions to DATASET/reviews.parquet and the data card's annotation section."""
    from pallm.review.db import open_db
    from pallm.review.export import REVIEWS_FILE, export

    if not (dataset / "manifest.json").is_file():
        _fail(f"{dataset} is not a built dataset (no manifest.json)")
    with open_db(db) as sessions, sessions() as s:
        summary = export(s, dataset)
    summary["agreement"] = {q.question: q.alpha for q in summary["agreement"]}
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"decisions: {dataset / REVIEWS_FILE}", err=True)
