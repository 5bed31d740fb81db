"""Many labelers at once against `pallm review serve`, then a SIGKILL: every confirmed save is in the database.

The labelers are bench/bench_review.py's (the load benchmark's), so the test and the benchmark exercise one
client; here the load is short and the server dies without a shutdown right after it."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from reliability import Ledger
from review_helpers import review_server
from sqlalchemy import func, select

from pallm.review import db
from pallm.review.models import Decision

sys.path.insert(0, str(ROOT / "bench"))
import bench_review

pytestmark = pytest.mark.slow


@pytest.mark.reliability
def test_labelers_under_load_then_a_killed_server_lose_no_save(
    reviewable: Path, review_db: str, free_port: int, tmp_path: Path, fault_rng: random.Random, ledger: Ledger
) -> None:
    users, seconds = 12, 6.0
    people = bench_review.prepare(review_db, reviewable, users)
    with review_server(review_db, free_port, tmp_path / "server.log") as (base, proc):
        stats, _, _ = asyncio.run(bench_review.load(base, people, seconds, fault_rng.randrange(2**31), lambda _: None))
        os.killpg(proc.pid, signal.SIGKILL)  # right after the last answer: no shutdown, no chance to flush
        proc.wait(10)
    assert not stats.errors, stats.errors[:10]
    assert stats.first_saves > users, "the load saved too little to mean anything"
    items, problems = bench_review.check_store(review_db, stats)
    assert not problems, problems
    with db.open_db(review_db) as sessions, sessions() as s:
        stored = s.scalar(select(func.count()).select_from(Decision))
    backend = review_db.split(":", 1)[0]
    ledger.record(f"review: {users} labelers, then SIGKILL ({backend})",
                  f"{seconds:.0f} s of accept/reject/edit on {items} items, {stats.updates} re-saves, server killed",
                  items=stats.first_saves, delivered=stored)  # fmt: skip
