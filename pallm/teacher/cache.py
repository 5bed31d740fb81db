"""The answer cache: every validated teacher answer, keyed by what produced it.

The key hashes the prompt template's task and version, the model, the sampling parameters, the
JSON schema and the rendered messages (the row's evidence). Each answer is committed as it
arrives, so a build killed mid-stage keeps every answer it received, and a rerun asks only for
what is missing. SQLite in WAL mode lets several processes share one cache file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


class AnswerCache:
    """A SQLite file of answers. Use from one thread (the teacher's event loop owns it)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a process crash loses no commit
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, task TEXT NOT NULL, model TEXT NOT NULL,"
            " data TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,"
            " created REAL NOT NULL)"
        )
        self._db.commit()

    def get(self, key: str) -> Answer | None:
        row = self._db.execute(
            "SELECT data, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
        ).fetchone()
        return Answer(json.loads(row[0]), row[1], row[2]) if row else None

    def put(self, key: str, task: str, model: str, answer: Answer) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, task, model, json.dumps(answer.data, ensure_ascii=False), answer.prompt_tokens,
             answer.completion_tokens, time.time()),
        )  # fmt: skip
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()
