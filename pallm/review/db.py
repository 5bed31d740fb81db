"""Open the review database and keep its schema current (Alembic)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
DB_ENV = "PALLM_REVIEW_DB"


def default_url() -> str:
    """`$PALLM_REVIEW_DB`, else a SQLite file `review.sqlite` in `$XDG_DATA_HOME/pallm` (`~/.local/share/pallm`).

    Decisions are work people did, so they live under the data home, not the cache.
    """
    if os.environ.get(DB_ENV):
        return os.environ[DB_ENV]
    xdg = os.environ.get("XDG_DATA_HOME")
    folder = (Path(xdg) if xdg else Path.home() / ".local" / "share") / "pallm"
    return f"sqlite:///{folder / 'review.sqlite'}"


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and plain file paths as well as SQLAlchemy URLs."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


def make_engine(url: str | None = None, pool_size: int = 20) -> Engine:
    """An engine for `url` (default: `default_url()`); SQLite files get WAL, full fsync and a busy timeout."""
    url = normalize_url(url or default_url())
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is fsynced before it returns, so a decision the UI confirmed survives a crash.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (creates it on an empty database)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def sessions(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def open_db(url: str | None = None) -> Iterator[sessionmaker[Session]]:
    """Open, migrate and yield a session factory; dispose of the engine after."""
    engine = make_engine(url)
    try:
        migrate(engine)
        yield sessions(engine)
    finally:
        engine.dispose()
