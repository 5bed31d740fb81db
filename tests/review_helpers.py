"""Helpers for the review tests: a real reviewable dataset, review databases, a running annotation server."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from pallm import pipeline
from pallm.config import BuildConfig
from pallm.dataset import read_manifest
from pallm.review import auth, db

POSTGRES_ENV = "PALLM_TEST_POSTGRES_URL"
XSS = '<script>alert("rationale")</script><img src=x onerror="alert(1)"> the pitch is high'
PASSWORDS = {"ann1": "ann1-secret", "ann2": "ann2-secret", "ann3": "ann3-secret", "rev1": "rev1-secret",
             "rev2": "rev2-secret", "admin": "admin-secret"}  # fmt: skip
ROLES = {"ann1": "annotator", "ann2": "annotator", "ann3": "annotator", "rev1": "reviewer", "rev2": "reviewer",
         "admin": "admin"}  # fmt: skip


def build_reviewable(
    ravdess16k: Path, root: Path, per_actor: int = 4, actors: tuple[int, ...] = (1, 2, 3),
    emotions: tuple[str, ...] | None = None,
) -> Path:  # fmt: skip
    """A real dataset: real RAVDESS clips of a few actors (only the emotion codes `emotions`, when given), Whisper
    tiny.en words, the rules teacher. Actors 1-4 are the test split, 5-8 validation, the others train."""
    src = root / "src"
    for a in actors:
        clips = sorted((ravdess16k / f"Actor_{a:02d}").glob("*.wav"))
        clips = [c for c in clips if emotions is None or c.stem.split("-")[2] in emotions]
        (src / f"Actor_{a:02d}").mkdir(parents=True)
        for clip in clips[:: max(1, len(clips) // per_actor)][:per_actor]:
            shutil.copy(clip, src / f"Actor_{a:02d}" / clip.name)
    out = root / "dataset"
    cfg = BuildConfig.load(
        None, corpora=[{"name": "ravdess", "path": str(src)}], out=out, asr="tiny.en", teacher="rules", workers=1,
        cards_index=root / "cards",
    )  # fmt: skip
    plan = pipeline.plan(cfg)
    pipeline.prepare_output(out)
    pipeline.finalize(plan, pipeline.run_chunks(plan, out), out)
    return out


def plant_rationale(dataset: Path, text: str = XSS) -> str:
    """Replace the first row's rationale in its shard (as a hostile teacher would write it); returns its id."""
    manifest = read_manifest(dataset)
    path = dataset / manifest["shards"][0]["path"]
    table = pq.read_table(path)
    rationale = table["rationale"].to_pylist()
    rationale[0] = text
    table = table.set_column(table.column_names.index("rationale"), "rationale", [rationale])
    pq.write_table(table, path)
    return table["id"][0].as_py()


@contextmanager
def postgres_database(admin: str | None = None) -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the server of `admin` (default `$PALLM_TEST_POSTGRES_URL`, a URL
    allowed to create databases), dropped after; skips the test without one."""
    admin = admin or os.environ.get(POSTGRES_ENV)
    if not admin:
        pytest.skip(f"no PostgreSQL: set {POSTGRES_ENV} (bash tests/start_postgres.sh prints it; CI sets it)")
    import psycopg

    name = f"pallm_test_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for _ in range(30):
                try:
                    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                    break
                except psycopg.errors.InsufficientPrivilege:
                    # FORCE may not end an autovacuum worker without superuser rights; it ends within seconds.
                    time.sleep(1)


def add_users(url: str, names: tuple[str, ...] = tuple(PASSWORDS)) -> None:
    with db.open_db(url) as sessions, sessions() as s:
        for n in names:
            auth.add_user(s, n, ROLES[n], PASSWORDS[n])


@contextmanager
def review_server(url: str, port: int, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`pallm review serve` as a user starts it; yields its base URL and process."""
    pallm = shutil.which("pallm", path=str(Path(sys.executable).parent))
    cmd = [pallm] if pallm else [sys.executable, "-m", "pallm.cli"]
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cmd, "review", "serve", "--port", str(port), "--db", url], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"annotation server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    try:
        yield base, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page)[1]


def logged_in(base: str, name: str) -> httpx.Client:
    """An HTTP client logged in as `name` through the login form."""
    c = httpx.Client(base_url=base, timeout=30)
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"name": name, "password": PASSWORDS[name], "csrf": token})
    assert r.status_code == 303, r.text
    return c
