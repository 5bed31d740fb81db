"""The annotation server over HTTP, as `pallm review serve` runs it: login, CSRF, roles, escaping, audio,
concurrent saves and durability, on SQLite and PostgreSQL."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import run_cli
from reliability import Ledger
from review_helpers import XSS, add_users, csrf_of, logged_in, plant_rationale, review_server
from sqlalchemy import select

from pallm.review import db, importer
from pallm.review.models import Adjudication, Decision, Item, User

pytestmark = pytest.mark.slow


def _prepare(url: str, ds: Path, overlap: int = 2) -> None:
    with db.open_db(url) as sessions, sessions() as s:
        importer.import_dataset(s, ds, sample=100, overlap=overlap)
    add_users(url)


def _raw_get(base: str, path: str, cookie: str = "") -> tuple[int, bytes]:
    """A request with exactly this path (http.client does not normalise `..` the way httpx would)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    r = conn.getresponse()
    return r.status, r.read()


def _first_item(c) -> tuple[int, str]:
    """Claim the next item; returns its id and the page."""
    r = c.get("/next")
    assert r.status_code == 303, r.text
    item_id = int(r.headers["location"].split("/")[2].split("?")[0])
    return item_id, c.get(f"/items/{item_id}").text


@pytest.fixture()
def server(reviewable: Path, review_db: str, free_port: int, tmp_path: Path):
    _prepare(review_db, reviewable)
    with review_server(review_db, free_port, tmp_path / "server.log") as (base, proc):
        yield base, proc, review_db


def test_every_page_needs_a_login(server) -> None:
    base, _, _ = server
    import httpx

    c = httpx.Client(base_url=base)
    for path in ("/", "/next", "/items/1", "/audio/1", "/conflicts", "/adjudicate/1", "/progress", "/guidelines"):
        r = c.get(path)
        assert (r.status_code, r.headers.get("location", "")) == (303, f"/login?next={path}"), path
    for path in ("/items/1", "/adjudicate/1", "/logout"):
        r = c.post(path, data={"decision": "accept"})
        assert r.status_code == 401, path
    assert "ravdess/" not in c.get("/items/1", follow_redirects=True).text, "no item data before login"


def test_logins_are_rate_limited_and_sessions_end(server) -> None:
    base, _, _ = server
    import httpx

    c = httpx.Client(base_url=base)
    for _ in range(5):
        r = c.post("/login", data={"name": "ann1", "password": "wrong-password", "csrf": csrf_of(c.get("/login").text)})
        assert r.status_code == 401 and "wrong name or password" in r.text
    r = c.post("/login", data={"name": "ann1", "password": "ann1-secret", "csrf": csrf_of(c.get("/login").text)})
    assert r.status_code == 429 and "too many failed logins" in r.text, "the right password no longer helps"
    assert "pallm_session" not in c.cookies
    other = logged_in(base, "ann2")  # the limit is per name, so others still get in
    assert other.get("/").status_code == 200
    other.post("/logout", data={"csrf": csrf_of(other.get("/").text)})
    assert other.get("/").status_code == 303, "after logout the cookie opens nothing"
    # A login form posted without its cookie token (a cross-site post) is refused.
    r = httpx.post(f"{base}/login", data={"name": "ann3", "password": "ann3-secret", "csrf": "forged"})
    assert r.status_code == 403


def test_forms_need_the_sessions_csrf_token(server) -> None:
    base, _, url = server
    ann1, ann2 = logged_in(base, "ann1"), logged_in(base, "ann2")
    item_id, page = _first_item(ann1)
    other_token = csrf_of(ann2.get("/").text)
    for token in (None, "", other_token):
        data = {"decision": "accept", "version": "0", **({"csrf": token} if token is not None else {})}
        r = ann1.post(f"/items/{item_id}", data=data)
        assert r.status_code == 403 and "security token" in r.text
    with db.open_db(url) as sessions, sessions() as s:
        assert s.scalars(select(Decision)).all() == [], "nothing was saved"
    r = ann1.post(f"/items/{item_id}", data={"decision": "accept", "version": "0", "csrf": csrf_of(page)})
    assert r.status_code == 303


def test_roles_are_checked_on_the_server(server) -> None:
    base, _, url = server
    ann1, ann2, rev1 = logged_in(base, "ann1"), logged_in(base, "ann2"), logged_in(base, "rev1")
    item_id, page = _first_item(ann1)
    token = csrf_of(page)
    for path in ("/conflicts", "/progress", f"/adjudicate/{item_id}"):
        assert ann1.get(path).status_code == 403, path
    r = ann1.post(f"/adjudicate/{item_id}", data={"decision": "accept", "version": "0", "csrf": token})
    assert r.status_code == 403
    with db.open_db(url) as sessions, sessions() as s:
        others = [i.id for i in s.scalars(select(Item)) if i.id != item_id]
    # Items not handed to an annotator do not exist for them: page, audio and save alike.
    assert ann1.get(f"/items/{others[-1]}").status_code == 404
    assert ann1.get(f"/audio/{others[-1]}").status_code == 404
    r = ann1.post(f"/items/{others[-1]}", data={"decision": "accept", "version": "0", "csrf": token})
    assert r.status_code == 404
    assert ann2.get(f"/items/{item_id}").status_code == 404
    assert rev1.get(f"/items/{others[-1]}").status_code == 200
    assert rev1.get("/progress").status_code == 200 and rev1.get("/conflicts").status_code == 200


@pytest.mark.parametrize("review_db", ["sqlite"], indirect=True)
def test_teacher_text_is_escaped(reviewable: Path, review_db: str, free_port: int, tmp_path: Path) -> None:
    ds = tmp_path / "dataset"
    shutil.copytree(reviewable, ds)
    row_id = plant_rationale(ds, XSS)
    _prepare(review_db, ds)
    with db.open_db(review_db) as sessions, sessions() as s:
        item_id = s.scalar(select(Item.id).where(Item.row_id == row_id))
    with review_server(review_db, free_port, tmp_path / "server.log") as (base, _):
        rev1 = logged_in(base, "rev1")
        r = rev1.get(f"/items/{item_id}")
        assert "&lt;script&gt;alert(" in r.text and "onerror=&#34;alert(1)&#34;" in r.text
        assert "<script>alert(" not in r.text and "<img src=x" not in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"], "inline script would not run anyway"
        # An edit that carries markup is escaped in its diff too.
        token = csrf_of(r.text)
        edit = {"decision": "edit", "version": "0", "csrf": token, "rationale": 'Calm. <b onmouseover="x()">hi</b>'}
        assert rev1.post(f"/items/{item_id}", data=edit).status_code == 303
        page = rev1.get(f"/items/{item_id}").text
        assert "<b onmouseover" not in page and "&lt;b onmouseover=&#34;x()&#34;&gt;hi&lt;/b&gt;" in page


def test_audio_is_served_only_for_items_in_the_database(server) -> None:
    base, _, url = server
    ann1 = logged_in(base, "ann1")
    item_id, _ = _first_item(ann1)
    r = ann1.get(f"/audio/{item_id}", headers={"Range": "bytes=0-43"})
    assert (r.status_code, r.content[:4], r.headers["content-range"].split("/")[0]) == (206, b"RIFF", "bytes 0-43")
    with db.open_db(url) as sessions, sessions() as s:
        wav = s.get(Item, item_id)
    assert len(ann1.get(f"/audio/{item_id}").content) > 44 and wav is not None
    cookie = f"pallm_session={ann1.cookies['pallm_session']}"
    for path in (
        "/audio/../../../../etc/passwd", "/audio/..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/audio/%2e%2e/%2e%2e/etc/passwd",
        "/audio/99999", "/audio/1.wav", "/static/../app.py", "/static/..%2fapp.py",
        "/static/%2e%2e/%2e%2e/pyproject.toml",
        "/audio/" + str(Path(__file__).resolve()),
    ):  # fmt: skip
        status, body = _raw_get(base, path, cookie)
        assert status in (404, 422), (path, status)
        assert b"root:" not in body and b"import " not in body and b"[project]" not in body, path


def test_two_reviewers_never_overwrite_each_other(server) -> None:
    base, _, url = server
    ann1, ann2 = logged_in(base, "ann1"), logged_in(base, "ann2")
    item_id, page = _first_item(ann1)
    ann1.post(f"/items/{item_id}", data={"decision": "accept", "version": "0", "csrf": csrf_of(page)})
    assert _first_item(ann2)[0] == item_id
    page2 = ann2.get(f"/items/{item_id}").text
    form = {"decision": "reject", "reasons": ["wrong_label"], "version": "0", "csrf": csrf_of(page2)}
    assert ann2.post(f"/items/{item_id}", data=form).status_code == 303
    rev1, rev2 = logged_in(base, "rev1"), logged_in(base, "rev2")
    assert f"/adjudicate/{item_id}" in rev1.get("/conflicts").text
    p1, p2 = rev1.get(f"/adjudicate/{item_id}").text, rev2.get(f"/adjudicate/{item_id}").text
    assert "ann1" in p1 and "ann2" in p1, "the adjudication page shows both decisions"
    r1 = rev1.post(f"/adjudicate/{item_id}", data={"decision": "accept", "version": "0", "csrf": csrf_of(p1)})
    assert r1.status_code == 303
    r2 = rev2.post(
        f"/adjudicate/{item_id}",
        data={"decision": "reject", "reasons": ["audio_problem"], "version": "0", "csrf": csrf_of(p2)},
    )
    assert r2.status_code == 409 and "saved by rev1" in r2.text
    # The same annotator in two tabs: the older tab's save is refused too.
    stale_tab = ann1.post(f"/items/{item_id}", data={"decision": "edit", "rationale": "x", "version": "0",
                                                      "csrf": csrf_of(page)})  # fmt: skip
    assert stale_tab.status_code == 409
    with db.open_db(url) as sessions, sessions() as s:
        adj = s.scalar(select(Adjudication).where(Adjudication.item_id == item_id))
        rev1_id = s.scalar(select(User.id).where(User.name == "rev1"))
        mine = s.scalar(select(Decision).join(User).where(Decision.item_id == item_id, User.name == "ann1"))
    assert (adj.decision, adj.user_id, adj.version) == ("accept", rev1_id, 1)
    assert (mine.decision, mine.version) == ("accept", 1)
    assert f"/adjudicate/{item_id}" not in rev1.get("/conflicts").text


@pytest.mark.reliability
def test_a_confirmed_save_survives_killing_the_server(server, ledger: Ledger) -> None:
    base, proc, url = server
    ann1 = logged_in(base, "ann1")
    item_id, page = _first_item(ann1)
    form = {"decision": "reject", "reasons": ["invented_cue", "audio_problem"], "comment": "hiss", "version": "0",
            "csrf": csrf_of(page)}  # fmt: skip
    r = ann1.post(f"/items/{item_id}", data=form)
    assert r.status_code == 303
    os.killpg(proc.pid, signal.SIGKILL)  # right after the answer: no shutdown, no chance to flush
    proc.wait(10)
    with db.open_db(url) as sessions, sessions() as s:
        d = s.scalar(select(Decision).where(Decision.item_id == item_id))
        stored = len(s.scalars(select(Decision)).all())
    assert (d.decision, d.reasons, d.comment) == ("reject", ["audio_problem", "invented_cue"], "hiss")
    ledger.record(
        f"review: SIGKILL after one save ({url.split(':', 1)[0]})",
        "server killed right after the 303",
        items=1,
        delivered=stored,
    )


def test_add_user_reads_the_password_from_standard_input(review_db: str, free_port: int, tmp_path: Path) -> None:
    env = dict(os.environ)
    r = run_cli(["review", "add-user", "carol", "--role", "reviewer", "--db", review_db], env, input="carol-pass-1\n")
    assert r.returncode == 0, r.stderr
    short = run_cli(["review", "add-user", "dave", "--db", review_db], env, input="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    bad_role = run_cli(["review", "add-user", "erin", "--role", "boss", "--db", review_db], env, input="erin-pass-1\n")
    assert bad_role.returncode == 2 and "role must be one of" in bad_role.stderr
    with db.open_db(review_db) as sessions, sessions() as s:
        users = {u.name: u for u in s.scalars(select(User))}
    assert set(users) == {"carol"} and users["carol"].role == "reviewer"
    assert "carol-pass-1" not in users["carol"].password_hash and users["carol"].password_hash.startswith("scrypt$")
    with review_server(review_db, free_port, tmp_path / "server.log") as (base, _):
        import httpx

        c = httpx.Client(base_url=base)
        r = c.post("/login", data={"name": "carol", "password": "carol-pass-1", "csrf": csrf_of(c.get("/login").text)})
        assert r.status_code == 303 and c.get("/progress").status_code == 200
