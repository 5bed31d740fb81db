"""The answer cache: every validated teacher answer, keyed by what produced it.

The key hashes the prompt template's task and version, the model, the sampling parameters, the
JSON schema and the rendered messages (the row's evidence). Each answer is committed as it
arrives, so a build killed mid-stage keeps every answer it received, and a rerun asks only for
what is missing.

Two stores, one table: a SQLite file (the default; WAL mode lets the processes of one machine share it)
and a PostgreSQL database (`postgresql://...`) for workers on several machines, since SQLite's locks
are not safe on network file systems. Two workers that write the same key write the same answer; the
last one stays.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

COLUMNS = "key, task, model, data, prompt_tokens, completion_tokens, created"
TABLE = (
    "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, task TEXT NOT NULL, model TEXT NOT NULL,"
    " data TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,"
    " created DOUBLE PRECISION NOT NULL)"
)


@dataclass(frozen=True)
class Answer:
    """A validated answer and what it cost."""

    data: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int


def request_key(task: str, version: str, model: str, sampling: dict[str, Any], schema: Any, messages: Any) -> str:
    """The cache key of one request."""
    blob = json.dumps(
        {"task": task, "version": version, "model": model, "sampling": sampling, "schema": schema,
         "messages": messages},
        sort_keys=True, ensure_ascii=False,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


class AnswerCache(Protocol):
    """What the teacher needs of a cache. Use one from one thread (the teacher's event loop owns it)."""

    def get(self, key: str) -> Answer | None: ...
    def put(self, key: str, task: str, model: str, answer: Answer) -> None: ...
    def __len__(self) -> int: ...
    def close(self) -> None: ...


def is_database_url(location: str | Path) -> bool:
    """Whether `location` names a PostgreSQL database rather than a SQLite file."""
    return str(location).startswith(("postgresql://", "postgres://"))


def public_location(location: str) -> str:
    """`location` as the manifest may show it: a database URL's password masked."""
    parts = urlsplit(location)
    if not is_database_url(location) or parts.password is None:
        return location
    userinfo, host = parts.netloc.rsplit("@", 1)  # the raw text: a percent-encoded password is masked too
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))


def open_cache(location: str | Path) -> AnswerCache:
    """The cache at `location`: a `postgresql://` URL, else a SQLite file (created with its folder)."""
    return PostgresCache(str(location)) if is_database_url(location) else SQLiteCache(Path(location))


def _row(key: str, task: str, model: str, answer: Answer) -> tuple[Any, ...]:
    return (key, task, model, json.dumps(answer.data, ensure_ascii=False), answer.prompt_tokens,
            answer.completion_tokens, time.time())  # fmt: skip


class SQLiteCache:
    """Answers in a SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a process crash loses no commit
        self._db.execute(TABLE)
        self._db.commit()

    def get(self, key: str) -> Answer | None:
        row = self._db.execute(
            "SELECT data, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
        ).fetchone()
        return Answer(json.loads(row[0]), row[1], row[2]) if row else None

    def put(self, key: str, task: str, model: str, answer: Answer) -> None:
        self._db.execute(f"INSERT OR REPLACE INTO answers ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         _row(key, task, model, answer))  # fmt: skip
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class PostgresCache:
    """Answers in a PostgreSQL database, one connection per process, each answer its own transaction."""

    def __init__(self, url: str) -> None:
        import psycopg  # the database driver of the review UI, a base dependency

        self.url = url
        self._db = psycopg.connect(url, autocommit=True)
        with self._db.transaction():
            # Two workers creating the table at once would race; the lock makes the second wait.
            self._db.execute("SELECT pg_advisory_xact_lock(hashtext('pallm answers'))")
            self._db.execute(TABLE)

    def get(self, key: str) -> Answer | None:
        row = self._db.execute(
            "SELECT data, prompt_tokens, completion_tokens FROM answers WHERE key = %s", (key,)
        ).fetchone()
        return Answer(json.loads(row[0]), row[1], row[2]) if row else None

    def put(self, key: str, task: str, model: str, answer: Answer) -> None:
        self._db.execute(
            f"INSERT INTO answers ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET"
            " task = EXCLUDED.task, model = EXCLUDED.model, data = EXCLUDED.data,"
            " prompt_tokens = EXCLUDED.prompt_tokens, completion_tokens = EXCLUDED.completion_tokens,"
            " created = EXCLUDED.created",
            _row(key, task, model, answer),
        )

    def __len__(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM answers").fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        self._db.close()
