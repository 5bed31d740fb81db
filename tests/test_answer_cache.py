"""The answer cache shared by several writers: a SQLite file on one machine, PostgreSQL across machines."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from openai_double import serve
from review_helpers import postgres_database
from teacher_helpers import build, rows, small_tree

from pallm.dataset import read_manifest
from pallm.teacher.cache import Answer, open_cache, public_location

FAST = {"backend": "openai", "model": "double", "backoff_s": 0.02, "backoff_max_s": 0.1, "timeout_s": 1.5}


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "answers.sqlite")
        return
    with postgres_database() as url:
        yield url


def _write(location: str, worker: int, keys: int) -> None:
    cache = open_cache(location)
    for k in range(keys):  # every worker writes every key: the same answer, as two workers asking alike would
        cache.put(f"key-{k}", "understand", "m", Answer({"k": k}, 10 + k, 1))
    cache.close()


def test_writers_in_several_processes_leave_one_answer_per_key(location: str) -> None:
    ctx = multiprocessing.get_context("spawn")  # fresh processes, as on other machines
    procs = [ctx.Process(target=_write, args=(location, w, 200)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = open_cache(location)
    assert len(cache) == 200
    assert cache.get("key-7") == Answer({"k": 7}, 17, 1)
    assert cache.get("missing") is None
    cache.close()


def test_builds_in_other_folders_share_a_postgres_cache(ravdess16k: Path, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    ids = small_tree(ravdess16k, root, actors=(1, 2), per_actor=5)
    with postgres_database() as url:
        with serve() as d:
            build(root, tmp_path / "a", {**FAST, "base_url": d.base_url, "cache": url})
        asked = len(d.answered())
        assert asked >= len(ids) and len(open_cache(url)) == asked  # every answer, once, in the database
        assert not (tmp_path / "a" / ".pallm" / "teacher.sqlite").exists()
        with serve() as d2:  # another folder (another machine's worker) finds every answer there
            build(root, tmp_path / "b", {**FAST, "base_url": d2.base_url, "cache": url})
        assert d2.seen == []
    assert rows(tmp_path / "b") == rows(tmp_path / "a")
    password = urlsplit(url).password
    manifest = read_manifest(tmp_path / "a")
    assert manifest["config"]["teacher"]["cache"].split("@")[-1] == url.split("@")[-1]  # where, recorded
    assert not password or f":{password}@" not in json.dumps(manifest)  # but not the password


def test_a_database_password_is_masked_where_it_is_shown() -> None:
    assert public_location("postgresql://u:s3cret@db:5432/pallm") == "postgresql://u:***@db:5432/pallm"
    assert public_location("postgresql://u:p%40ss@db/pallm") == "postgresql://u:***@db/pallm"
    assert public_location("postgresql://u@db/pallm") == "postgresql://u@db/pallm"
    assert public_location("/data/out/.pallm/teacher.sqlite") == "/data/out/.pallm/teacher.sqlite"
