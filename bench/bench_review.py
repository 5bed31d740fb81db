"""Load benchmark of the annotation UI: many labelers at once against `pallm review serve`, on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_review.py [--users 50] [--seconds 60] [--dataset DIR] [--postgres URL]

For each backend it makes a throwaway review database (a SQLite file in a temporary folder; a fresh PostgreSQL
database in the server `--postgres` names, default `$PALLM_TEST_POSTGRES_URL`, skipped with a note without one),
imports every item of a built dataset with `pallm review import DIR --sample 1000 --overlap 3`, adds the
annotators, starts the server with the real command `pallm review serve --port P --db URL` and lets the simulated
labelers loose on loopback. Each labeler is one `httpx.AsyncClient` (its own cookies) that logs in once through the
form, then until the deadline: GET /next (303 to its next item), GET /items/ID (the item page), POST /items/ID with
accept, reject (`invented_cue`) or an edited rationale (303 to /next?saved=ID). When its queue is empty it reopens
an item it already decided and saves again with the version shown (the update path). Every 10th round it also
GETs /login, the cheapest page, as the reference latency under the same load.

Logins happen before the timed window (their scrypt hashing is not what is measured). Every unexpected status
or failed request is an error and is printed; a 409 on save (someone saved the same decision first) is counted
apart: it is expected only when two sessions of one user collide, which this load never does. After the run the
database is checked: one decision per first save, no item over its overlap, and the versions add up to the saves.

Without `--dataset`, the built-in synthetic corpus is built once (`pallm build-dataset --asr none --teacher rules`,
about a minute) into bench/.cache/, which ignores itself. Prints a markdown table per backend: requests, errors,
409s, p50/p95 of the item page, the save and the reference, the ratios to the reference p50, saves/s, the server's
peak RSS (VmHWM of the server process and any children: the logins' scrypt hashing included) and its largest RSS
sampled during the timed window; then every kind of request apart, the CPU used, and every error.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from results import Row, add_rows_option, write_rows  # noqa: E402 - run as a script, bench/ is on the path
from review_helpers import postgres_database, review_server  # noqa: E402 - the tests' server and database helpers

CACHE = ROOT / "bench" / ".cache"
DEFAULT_DATASET = CACHE / "review-synthetic"
POSTGRES_ENV = "PALLM_TEST_POSTGRES_URL"
BIN = Path(sys.executable).parent
PALLM = [str(BIN / "pallm")] if (BIN / "pallm").exists() else [sys.executable, "-m", "pallm.cli"]
OVERLAP = 3
REFERENCE_EVERY = 10
#: In-flight requests may finish this long after the deadline; then they are cancelled and counted as errors.
GRACE_S = 30.0
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
VERSION = re.compile(r'name="version" value="(\d+)"')
RATIONALE = re.compile(r'<textarea name="rationale"[^>]*>(.*?)</textarea>', re.S)


# -- measurements ------------------------------------------------------------------------------------------------


@dataclass
class Stats:
    """What all labelers saw: latencies by kind of request (seconds), counts, and every unexpected answer."""

    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    requests: int = 0
    conflicts: int = 0
    first_saves: int = 0
    updates: int = 0
    idle: int = 0
    errors: list[str] = field(default_factory=list)
    saves_by_user: Counter[str] = field(default_factory=Counter)


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100); nan for no data."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))]


def ms(x: float) -> str:
    return "n/a" if x != x else f"{x * 1000:.1f}"


def snippet(text: str, n: int = 160) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", text).split())[:n]


# -- the simulated labeler ---------------------------------------------------------------------------------------


class Labeler:
    """One annotator in one browser: logs in once, then opens items and saves decisions until the deadline."""

    def __init__(self, base: str, name: str, password: str, stats: Stats, rng: random.Random) -> None:
        self.name, self.password, self.stats, self.rng = name, password, stats, rng
        self.client = httpx.AsyncClient(base_url=base, timeout=GRACE_S * 4, follow_redirects=False)
        self.decided: set[int] = set()

    async def request(
        self, kind: str, method: str, url: str, expect: tuple[int, ...], data: dict[str, str | list[str]] | None = None
    ) -> httpx.Response | None:
        """One timed request; an answer outside `expect`, or no answer, is an error (and returns None)."""
        t = time.perf_counter()
        try:
            r = await self.client.request(method, url, data=data)
        except httpx.HTTPError as e:
            self.stats.errors.append(f"{self.name} {method} {url}: {type(e).__name__}: {e}")
            return None
        dt = time.perf_counter() - t
        self.stats.requests += 1
        if r.status_code not in expect:
            self.stats.errors.append(f"{self.name} {method} {url} -> {r.status_code}: {snippet(r.text)}")
            return None
        self.stats.latency[kind].append(dt)
        return r

    async def login(self) -> bool:
        page = await self.request("login_form", "GET", "/login", (200,))
        token = CSRF.search(page.text) if page else None
        if token is None:
            if page is not None:
                self.stats.errors.append(f"{self.name} GET /login: no csrf field in the form")
            return False
        form = {"name": self.name, "password": self.password, "csrf": token[1], "next": "/"}
        return await self.request("login", "POST", "/login", (303,), form) is not None

    def decision(self, page: str, csrf: str, version: str) -> dict[str, str | list[str]]:
        """A random decision as the form would post it: accept, reject with a reason, or an edited rationale."""
        form: dict[str, str | list[str]] = {"csrf": csrf, "version": version, "comment": ""}
        choice = self.rng.choice(("accept", "reject", "edit"))
        form["decision"] = choice
        if choice == "reject":
            form["reasons"] = ["invented_cue"]
        elif choice == "edit":
            old = RATIONALE.search(page)
            text = html.unescape(old[1]).strip() if old else ""
            form["rationale"] = f"{text} Edited by {self.name}: {secrets.token_hex(4)}."
        return form

    async def work(self, deadline: float) -> None:
        rounds, next_url = 0, "/next"
        while time.monotonic() < deadline:
            rounds += 1
            if rounds % REFERENCE_EVERY == 0:
                await self.request("reference", "GET", "/login", (200,))
            if time.monotonic() >= deadline:
                break
            r = await self.request("next", "GET", next_url, (200, 303))
            next_url = "/next"
            if r is None:
                continue
            if r.status_code == 303:
                kind, item_url = "item", r.headers["location"]
                item_id = int(re.fullmatch(r"/items/(\d+)(\?saved=\d+)?", item_url)[1])
            elif "Your queue is empty" in r.text:
                if not self.decided:  # nothing handed to this user yet, nothing to revisit
                    self.stats.idle += 1
                    await asyncio.sleep(0.1)
                    continue
                item_id = self.rng.choice(sorted(self.decided))
                kind, item_url = "reopen", f"/items/{item_id}"
            else:
                self.stats.errors.append(f"{self.name} GET /next -> 200 but not the empty queue: {snippet(r.text)}")
                continue
            if time.monotonic() >= deadline:
                break
            page = await self.request(kind, "GET", item_url, (200,))
            if page is None:
                continue
            csrf, version = CSRF.search(page.text), VERSION.search(page.text)
            if csrf is None or version is None:
                self.stats.errors.append(f"{self.name} GET {item_url}: no csrf or version field in the form")
                continue
            if time.monotonic() >= deadline:
                break
            form = self.decision(page.text, csrf[1], version[1])
            first = version[1] == "0"
            saved = await self.request("save" if first else "resave", "POST", f"/items/{item_id}", (303, 409), form)
            if saved is None:
                continue
            if saved.status_code == 409:  # not a save: its latency goes apart
                self.stats.conflicts += 1
                self.stats.latency["conflict"].append(self.stats.latency["save" if first else "resave"].pop())
                continue
            if saved.headers.get("location") != f"/next?saved={item_id}":
                self.stats.errors.append(f"{self.name} POST /items/{item_id} -> 303 to {saved.headers.get('location')}")
                continue
            self.decided.add(item_id)
            self.stats.saves_by_user[self.name] += 1
            if first:
                self.stats.first_saves += 1
            else:
                self.stats.updates += 1
            next_url = saved.headers["location"]  # as a browser: follow to /next?saved=ID

    async def close(self) -> None:
        await self.client.aclose()


async def load(
    base: str, users: dict[str, str], seconds: float, seed: int, mark: Callable[[str], None]
) -> tuple[Stats, float, float]:
    """Log everyone in, then run all labelers for `seconds`; returns the stats, the window and the client CPU.

    `mark("start")` and `mark("end")` are called as the timed window opens and closes."""
    stats = Stats()
    labelers = [Labeler(base, n, p, stats, random.Random(f"{seed}-{n}")) for n, p in users.items()]
    try:
        t = time.perf_counter()
        ok = await asyncio.gather(*(lab.login() for lab in labelers))
        print(f"  {sum(ok)}/{len(ok)} logged in in {time.perf_counter() - t:.1f} s", flush=True)
        working = [lab for lab, good in zip(labelers, ok, strict=True) if good]
        mark("start")
        cpu0, t0 = time.process_time(), time.monotonic()
        tasks = [asyncio.create_task(lab.work(t0 + seconds)) for lab in working]
        done, pending = await asyncio.wait(tasks, timeout=seconds + GRACE_S)
        for task in pending:
            task.cancel()
        stats.errors += [f"a labeler still busy {GRACE_S:.0f} s after the deadline: cancelled" for _ in pending]
        stats.errors += [f"labeler crashed: {t.exception()!r}" for t in done if t.exception() is not None]
        window, cpu = time.monotonic() - t0, time.process_time() - cpu0
        mark("end")
    finally:
        await asyncio.gather(*(lab.close() for lab in labelers))
    return stats, window, cpu


# -- the server and its database ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(p.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children[tree[-1]]
    return tree


def rss_mib(pid: int, key: str = "VmHWM") -> float:
    """VmHWM (peak resident set; or `key`, e.g. VmRSS, now) of the process and its children, summed, in MiB."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
        except OSError:
            continue
        total += int(fields.get(key, "0 kB").split()[0])
    return total / 1024


class Meter:
    """The server's CPU and RSS and the machine's CPU as the window opens and closes; the server's largest RSS
    sampled in the window (5 times a second). VmHWM covers the server's whole life, logins included."""

    def __init__(self, pid: int) -> None:
        self.pid, self.window_rss = pid, 0.0
        self.cpu: dict[str, float] = {}
        self.rss: dict[str, float] = {}
        self.machine: dict[str, tuple[int, int]] = {}
        self.sampling = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while not self.stop.wait(0.2):
            if self.sampling.is_set():
                self.window_rss = max(self.window_rss, rss_mib(self.pid, "VmRSS"))

    def mark(self, what: str) -> None:
        self.cpu[what], self.rss[what] = cpu_seconds(self.pid), rss_mib(self.pid, "VmRSS")
        self.machine[what] = machine_cpu()
        (self.sampling.set if what == "start" else self.sampling.clear)()

    def machine_busy(self) -> float:
        """The share of all CPUs' time spent busy during the window (any process: server, bench, PostgreSQL)."""
        (b0, t0), (b1, t1) = self.machine["start"], self.machine["end"]
        return (b1 - b0) / max(1, t1 - t0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def machine_cpu() -> tuple[int, int]:
    """Busy and total jiffies of all CPUs so far (/proc/stat), so a window's share of busy time can be taken."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and its children so far."""
    total = 0
    for p in process_tree(pid):
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="pallm-bench-review-") as tmp:
        yield f"sqlite:///{tmp}/review.sqlite"


def prepare(url: str, dataset: Path, users: int) -> dict[str, str]:
    """Import every item (overlap 3) with the real command and add the annotators; returns name -> password."""
    from pallm.review import auth, db

    subprocess.run([*PALLM, "review", "import", str(dataset), "--sample", "1000", "--overlap", str(OVERLAP),
                    "--db", url], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    people = {f"bench{i:03d}": f"bench-secret-{i:03d}" for i in range(users)}
    with db.open_db(url) as sessions, sessions() as s:
        for name, password in people.items():
            auth.add_user(s, name, "annotator", password)
    return people


def check_store(url: str, stats: Stats) -> tuple[int, list[str]]:
    """The database agrees with what the clients were told; returns the item count and the disagreements."""
    from sqlalchemy import func, select

    from pallm.review import db
    from pallm.review.models import Decision, Item, User

    problems = []
    with db.open_db(url) as sessions, sessions() as s:
        items = s.scalar(select(func.count()).select_from(Item))
        decisions = s.scalar(select(func.count()).select_from(Decision))
        most = s.scalar(select(func.count()).select_from(Decision).group_by(Decision.item_id).order_by(
            func.count().desc()).limit(1)) or 0  # fmt: skip
        sums = select(User.name, func.sum(Decision.version)).join(Decision).group_by(User.name)
        versions = dict(s.execute(sums).all())
    if decisions != stats.first_saves:
        problems.append(f"{decisions} decisions stored, {stats.first_saves} first saves confirmed")
    if most > OVERLAP:
        problems.append(f"an item has {most} decisions, more than its overlap {OVERLAP}")
    for name in sorted(set(versions) | set(stats.saves_by_user)):
        if (versions.get(name) or 0) != stats.saves_by_user[name]:
            problems.append(f"{name}: versions add up to {versions.get(name)}, {stats.saves_by_user[name]} saves")
    return items, problems


def run_backend(backend: str, url: str, dataset: Path, args: argparse.Namespace) -> dict[str, object]:
    print(f"{backend}: importing {dataset.name} and adding {args.users} annotators", flush=True)
    people = prepare(url, dataset, args.users)
    log = CACHE / f"server-{backend}.log"
    with review_server(url, free_port(), log) as (base, proc):
        print(f"{backend}: {args.users} labelers for {args.seconds:.0f} s on {base} (server log: {log})", flush=True)
        meter = Meter(proc.pid)
        try:
            stats, window, client_cpu = asyncio.run(load(base, people, args.seconds, args.seed, meter.mark))
        finally:
            meter.close()
        rss = rss_mib(proc.pid)
    items, problems = check_store(url, stats)
    stats.errors += [f"store check: {p}" for p in problems]
    logged = log.read_text(errors="replace")
    if "Traceback" in logged or "ERROR" in logged:
        stats.errors.append(f"the server log has {logged.count('Traceback')} tracebacks and ERROR lines: see {log}")
    print(f"{backend}: done; {items} items, {stats.first_saves} first saves, {stats.updates} updates", flush=True)
    return {"backend": backend, "stats": stats, "window": window, "client_cpu": client_cpu,
            "server_cpu": meter.cpu["end"] - meter.cpu["start"], "rss": rss, "window_rss": meter.window_rss,
            "start_rss": meter.rss["start"], "machine": meter.machine_busy(), "log": log}  # fmt: skip


# -- the dataset --------------------------------------------------------------------------------------------------


def ensure_dataset(given: Path | None) -> Path:
    """The dataset to import: `given`, else the synthetic corpus built once into the bench cache."""
    if given is not None:
        if not (given / "manifest.json").is_file():
            sys.exit(f"{given} is not a built dataset (no manifest.json)")
        return given
    if (DEFAULT_DATASET / "manifest.json").is_file():
        return DEFAULT_DATASET
    shutil.rmtree(DEFAULT_DATASET, ignore_errors=True)  # an interrupted build: start over
    log = CACHE / "build.log"
    print(f"building the synthetic dataset into {DEFAULT_DATASET} (once; log: {log})", flush=True)
    with open(log, "wb") as out:
        subprocess.run([*PALLM, "build-dataset", "--out", str(DEFAULT_DATASET), "--asr", "none", "--teacher",
                        "rules", "--cards-index", str(CACHE / "cards")], check=True, stdout=out,
                       stderr=subprocess.STDOUT)  # fmt: skip
    return DEFAULT_DATASET


# -- report -------------------------------------------------------------------------------------------------------


def report(results: list[dict[str, object]], users: int) -> None:
    print(f"\n{users} labelers, {os.cpu_count()} CPUs, one uvicorn process; latencies in ms\n")
    print("| backend | requests | errors | 409s | item p50 | item p95 | save p50 | save p95 | /login p50 | "
          "/login p95 | item/ref | save/ref | saves/s | server peak RSS | RSS in window |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for res in results:
        st: Stats = res["stats"]  # type: ignore[assignment]
        lat = st.latency
        item, save, ref = lat["item"] + lat["reopen"], lat["save"] + lat["resave"], lat["reference"]
        p = {k: (percentile(v, 50), percentile(v, 95)) for k, v in (("item", item), ("save", save), ("ref", ref))}
        saves_s = (st.first_saves + st.updates) / float(res["window"])  # type: ignore[arg-type]
        print(f"| {res['backend']} | {st.requests} | {len(st.errors)} | {st.conflicts} | {ms(p['item'][0])} | "
              f"{ms(p['item'][1])} | {ms(p['save'][0])} | {ms(p['save'][1])} | {ms(p['ref'][0])} | "
              f"{ms(p['ref'][1])} | {p['item'][0] / p['ref'][0]:.1f} | {p['save'][0] / p['ref'][0]:.1f} | "
              f"{saves_s:.1f} | {res['rss']:.0f} MiB | {res['window_rss']:.0f} MiB |")  # fmt: skip
    print("\nBy request (ms):\n")
    print("| backend | request | n | p50 | p95 | max |")
    print("|---|---|---:|---:|---:|---:|")
    names = {"next": "GET /next (303)", "item": "GET /items/ID via /next", "reopen": "GET /items/ID reopened",
             "save": "POST /items/ID first save", "resave": "POST /items/ID update",
             "conflict": "POST /items/ID answered 409", "reference": "GET /login",
             "login": "POST /login (before the window)"}  # fmt: skip
    for res in results:
        lat = res["stats"].latency  # type: ignore[attr-defined]
        for k, title in names.items():
            v = lat.get(k, [])
            print(f"| {res['backend']} | {title} | {len(v)} | {ms(percentile(v, 50))} | {ms(percentile(v, 95))} | "
                  f"{ms(max(v) if v else float('nan'))} |")  # fmt: skip
    print()
    for res in results:
        st, window = res["stats"], float(res["window"])  # type: ignore[arg-type]
        print(f"{res['backend']}: window {window:.1f} s, {st.first_saves} first saves + {st.updates} updates, "
              f"{st.idle} idle polls; CPU over the window (100% = one core): server "
              f"{float(res['server_cpu']) / window:.0%}, bench client {float(res['client_cpu']) / window:.0%}, "
              f"all CPUs {float(res['machine']):.0%} busy; "
              f"server RSS {float(res['start_rss']):.0f} MiB as the window opened (after the logins), "
              f"at most {float(res['window_rss']):.0f} MiB in it; server log {res['log']}")  # fmt: skip
        for e in st.errors:
            print(f"  error: {e}")


def summary_rows(results: list[dict[str, object]], users: int) -> list[Row]:
    """The item page's and the save's median latency against /login's, per backend, for bench/run_all.py."""
    rows = []
    for res in results:
        lat = res["stats"].latency  # type: ignore[attr-defined]
        ref = percentile(lat["reference"], 50) * 1000
        for stage, kinds in (("item page", ("item", "reopen")), ("save", ("save", "resave"))):
            ours = percentile([x for k in kinds for x in lat[k]], 50) * 1000
            rows.append(Row("review", f"{stage} p50 ({res['backend']})", f"{users} labelers", ours, ref, "ms",
                            "GET /login p50", float(res["rss"])))  # type: ignore[arg-type]  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=50, help="concurrent labelers (default 50)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the timed window per backend (default 60)")
    ap.add_argument("--dataset", type=Path, help="a built dataset to import (default: build the synthetic one)")
    ap.add_argument("--postgres", default=os.environ.get(POSTGRES_ENV),
                    help=f"PostgreSQL admin URL that may create databases (default: ${POSTGRES_ENV})")  # fmt: skip
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--seed", type=int, default=0)
    add_rows_option(ap)
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")
    dataset = ensure_dataset(args.dataset)
    results = []
    if args.backend in ("sqlite", "both"):
        with sqlite_database() as url:
            results.append(run_backend("sqlite", url, dataset, args))
    if args.backend in ("postgres", "both"):
        if args.postgres:
            with postgres_database(args.postgres) as url:
                results.append(run_backend("postgresql", url, dataset, args))
        else:
            print(f"PostgreSQL skipped: no --postgres and no ${POSTGRES_ENV} (bash tests/start_postgres.sh prints one)")
    report(results, args.users)
    write_rows(args.rows, summary_rows(results, args.users))
    if any(r["stats"].errors for r in results):  # type: ignore[attr-defined]
        sys.exit(1)


if __name__ == "__main__":
    main()
