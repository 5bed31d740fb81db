"""The annotation UI: FastAPI pages over the review store (`pallm.review`).

Every page needs a login (a session cookie whose token the database keeps only hashed); every form carries
the session's CSRF token; roles are checked here, on the server. Templates escape everything they show.
"""

import difflib
import html
import json
import os
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from pallm.review import auth, db, guidelines, workflow
from pallm.review.models import EDITABLE, REASONS, Adjudication, Decision, Item, ItemAudio, User

HERE = Path(__file__).parent
SESSION_COOKIE = "pallm_session"
LOGIN_CSRF_COOKIE = "pallm_login_csrf"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Adds the security headers to every response (a plain ASGI middleware: cheaper than `@app.middleware`)."""

    HEADERS = (
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    )

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [h for h in self.HEADERS if h[0] not in names]
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class LoginRequired(Exception):
    """Raised by the `user` dependency; answered with a redirect to the login page."""


class NotFound(Exception):
    """No such item, or not one this user may open: answered 404 either way, so ids cannot be probed."""


class Forbidden(Exception):
    """The logged-in user's role does not allow this."""


def create_app(db_url: str | None = None) -> FastAPI:
    """The app on the review database at `db_url` (default: `pallm.review.db.default_url()`), migrated on start."""
    engine = db.make_engine(db_url)
    db.migrate(engine)
    make_session = db.sessions(engine)
    app = FastAPI(title="PALLM annotation", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.add_middleware(SecurityHeaders)
    # Each password check takes 16 MiB (scrypt). Run them on one thread per core: hashing is CPU-bound, so that
    # costs no speed, and only those threads' malloc arenas keep the memory (each request thread's would).
    hasher = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="password-check")

    def verify(password: str, stored: str) -> bool:
        return hasher.submit(auth.verify_password, password, stored).result()

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["pct"] = lambda x: "n/a" if x is None else f"{x:.0%}"
    templates.env.filters["num"] = lambda x: "n/a" if x is None else f"{x:.3f}"
    guidelines_html = Markup(MarkdownIt("commonmark", {"html": False}).render(guidelines.text()))

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            return HTMLResponse("login required", status_code=401)
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, e: Forbidden) -> Response:
        return page(request, "error.html", {"message": str(e) or "not allowed for your role"}, status=403)

    def session() -> Iterator[Session]:
        with make_session() as s:
            yield s

    DB = Annotated[Session, Depends(session)]

    def current(request: Request, s: DB) -> tuple[User, auth.AuthSession]:
        found = auth.session_user(s, request.cookies.get(SESSION_COOKIE))
        if found is None:
            raise LoginRequired()
        return found

    Who = Annotated[tuple[User, auth.AuthSession], Depends(current)]

    def page(request: Request, name: str, ctx: dict[str, Any], who: Any = None, status: int = 200) -> Response:
        user, sess = who if who else (None, None)
        ctx = {"user": user, "csrf": sess.csrf if sess else "", "guideline_version": guidelines.GUIDELINE_VERSION,
               **ctx}  # fmt: skip
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def check_csrf(sess: auth.AuthSession, token: str | None) -> None:
        if not auth.csrf_ok(sess.csrf, token):
            raise Forbidden("the form's security token is missing or outdated: reload the page and try again")

    def get_item(s: Session, user: User, item_id: int) -> Item:
        item = s.get(Item, item_id)
        if item is None or not workflow.may_open(s, user, item):
            raise NotFound()
        return item

    # -- login ------------------------------------------------------------------------------------------------

    @app.get("/login")
    def login_page(request: Request, next: str = "/") -> Response:
        token = secrets.token_urlsafe(32)
        r = page(request, "login.html", {"login_csrf": token, "next": _safe_next(next), "error": None})
        r.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=_https(request))
        return r

    @app.post("/login")
    def login(
        request: Request, s: DB, name: Annotated[str, Form()], password: Annotated[str, Form()],
        csrf: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/",
    ) -> Response:  # fmt: skip
        def again(message: str, status: int) -> Response:
            token = secrets.token_urlsafe(32)
            r = page(request, "login.html", {"login_csrf": token, "next": _safe_next(next), "error": message},
                     status=status)  # fmt: skip
            r.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=_https(request))
            return r

        if not auth.csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE, ""), csrf):
            return again("the login form expired: please try again", 403)
        try:
            address = request.client.host if request.client else "?"
            token, _ = auth.login(s, name.strip(), password, address, verify=verify)
        except auth.AuthError as e:
            return again(str(e), 429 if isinstance(e, auth.TooManyFailures) else 401)
        r = RedirectResponse(_safe_next(next), status_code=303)
        r.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=_https(request),
                     max_age=auth.SESSION_DAYS * 86400)  # fmt: skip
        r.delete_cookie(LOGIN_CSRF_COOKIE)
        return r

    @app.post("/logout")
    def logout(request: Request, s: DB, who: Who, csrf: Annotated[str, Form()] = "") -> Response:
        check_csrf(who[1], csrf)
        auth.logout(s, request.cookies.get(SESSION_COOKIE))
        r = RedirectResponse("/login", status_code=303)
        r.delete_cookie(SESSION_COOKIE)
        return r

    # -- annotating -------------------------------------------------------------------------------------------

    @app.get("/")
    def home(request: Request, s: DB, who: Who) -> Response:
        user = who[0]
        mine = s.scalars(select(Decision.decision).where(Decision.user_id == user.id)).all()
        return page(request, "home.html", {"done": len(mine), "can": lambda a: auth.can(user, a)}, who)

    @app.get("/next")
    def next_item(request: Request, s: DB, who: Who, saved: int | None = None) -> Response:
        item = workflow.next_item(s, who[0])
        if item is None:
            return page(request, "empty.html", {"saved": saved}, who)
        return RedirectResponse(f"/items/{item.id}" + (f"?saved={saved}" if saved else ""), status_code=303)

    @app.get("/items/{item_id}")
    def item_page(request: Request, s: DB, who: Who, item_id: int, saved: int | None = None) -> Response:
        item = get_item(s, who[0], item_id)
        mine = s.scalar(select(Decision).where(Decision.item_id == item.id, Decision.user_id == who[0].id))
        saved_item = s.get(Item, saved) if saved else None
        return page(request, "item.html", item_context(s, item, mine, "annotate") | {"saved": saved_item}, who)

    @app.post("/items/{item_id}")
    def save(request: Request, s: DB, who: Who, item_id: int, form: Annotated[DecisionForm, Form()]) -> Response:
        check_csrf(who[1], form.csrf)
        item = get_item(s, who[0], item_id)
        try:
            workflow.save_decision(s, who[0], item, form.decision_input())
        except workflow.Refused as e:
            mine = s.scalar(select(Decision).where(Decision.item_id == item.id, Decision.user_id == who[0].id))
            return refused(request, who, e, item_context(s, item, mine, "annotate") | {"saved": None})
        return RedirectResponse(f"/next?saved={item.id}", status_code=303)

    def refused(request: Request, who: Any, e: workflow.Refused, ctx: dict[str, Any]) -> Response:
        """The item page again, with why the save was refused: 409 for an outdated version, else 422."""
        status = 409 if isinstance(e, workflow.Stale) else 422
        return page(request, "item.html", ctx | {"error": str(e)}, who, status=status)

    def item_context(s: Session, item: Item, mine: Decision | Adjudication | None, mode: str) -> dict[str, Any]:
        return {
            "item": item, "mode": mode, "mine": mine, "reasons": REASONS, "editable": EDITABLE,
            "diffs": {k: word_diff(getattr(item, k) or "", getattr(mine, k)) for k in EDITABLE
                      if mine is not None and getattr(mine, k)},
            "peaks_json": json.dumps(s.scalar(select(ItemAudio.peaks).where(ItemAudio.item_id == item.id)) or []),
            "error": None,
        }  # fmt: skip

    @app.get("/audio/{item_id}")
    def audio(request: Request, s: DB, who: Who, item_id: int) -> Response:
        item = get_item(s, who[0], item_id)
        wav = s.scalar(select(ItemAudio.wav).where(ItemAudio.item_id == item.id))
        if wav is None:
            raise NotFound()
        return _ranged(request, wav, "audio/wav")

    # -- reviewing --------------------------------------------------------------------------------------------

    def reviewer(who: Who) -> tuple[User, auth.AuthSession]:
        if not auth.can(who[0], "adjudicate"):
            raise Forbidden("reviewers and admins only")
        return who

    Reviewer = Annotated[tuple[User, auth.AuthSession], Depends(reviewer)]

    @app.get("/conflicts")
    def conflicts(request: Request, s: DB, who: Reviewer) -> Response:
        items = workflow.conflicts(s)
        by_item = workflow.decisions_by_item(s, items)
        names = {u.id: u.name for u in s.scalars(select(User))}
        return page(request, "conflicts.html", {"items": items, "by_item": by_item, "names": names}, who)

    @app.get("/adjudicate/{item_id}")
    def adjudicate_page(request: Request, s: DB, who: Reviewer, item_id: int) -> Response:
        return page(request, "item.html", adjudication_context(s, get_item(s, who[0], item_id)), who)

    @app.post("/adjudicate/{item_id}")
    def adjudicate(
        request: Request, s: DB, who: Reviewer, item_id: int, form: Annotated[DecisionForm, Form()]
    ) -> Response:
        check_csrf(who[1], form.csrf)
        item = get_item(s, who[0], item_id)
        try:
            workflow.adjudicate(s, who[0], item, form.decision_input())
        except workflow.Refused as e:
            return refused(request, who, e, adjudication_context(s, item))
        return RedirectResponse("/conflicts", status_code=303)

    def adjudication_context(s: Session, item: Item) -> dict[str, Any]:
        adj = s.scalar(select(Adjudication).where(Adjudication.item_id == item.id))
        decisions = workflow.decisions_by_item(s, [item])[item.id]
        names = {u.id: u.name for u in s.scalars(select(User))}
        others = [
            {"who": names[d.user_id], "d": d, "diffs": {k: word_diff(getattr(item, k) or "", getattr(d, k))
                                                        for k in EDITABLE if getattr(d, k)}}
            for d in decisions
        ]  # fmt: skip
        return item_context(s, item, adj, "adjudicate") | {"others": others, "saved": None}

    @app.get("/progress")
    def progress(request: Request, s: DB, who: Reviewer) -> Response:
        from pallm.review.agreement import agreement  # scikit-learn: loaded when a reviewer first asks

        rows = s.execute(select(Decision.item_id, User.name, Decision.decision, Decision.reasons).join(User)).all()
        agree = agreement({"item_id": i, "annotator": n, "decision": d, "reasons": r} for i, n, d, r in rows)
        return page(request, "progress.html", {"p": workflow.progress(s), "agreement": agree}, who)

    @app.get("/guidelines")
    def guidelines_page(request: Request, who: Who) -> Response:
        return page(request, "guidelines.html", {"body": guidelines_html}, who)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, _: NotFound) -> Response:
        return HTMLResponse("not found", status_code=404)

    return app


class DecisionForm(BaseModel):
    """The item page's form as posted: the decision, edited texts, reasons, comment, the version it showed."""

    csrf: str = ""
    decision: str = ""
    version: int = 0
    rationale: str = ""
    reply: str = ""
    words_only_reply: str = ""
    reasons: list[str] = []
    comment: str = ""

    def decision_input(self) -> workflow.DecisionInput:
        edits = {k: getattr(self, k) for k in EDITABLE if getattr(self, k)}
        return workflow.DecisionInput(self.decision, edits, self.reasons, self.comment, self.version)


def word_diff(old: str, new: str | None) -> Markup:
    """The edit as escaped HTML with <del> and <ins> around changed words."""
    if new is None:
        return Markup("")
    a, b = re.findall(r"\S+|\s+", old), re.findall(r"\S+|\s+", new)
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape("".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(f"<del>{html.escape(''.join(a[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{html.escape(''.join(b[j1:j2]))}</ins>")
    return Markup("".join(out))


def _safe_next(target: str) -> str:
    """Only paths on this site (no `//host` or scheme), so the login cannot redirect elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def _ranged(request: Request, data: bytes, media_type: str) -> Response:
    """Serve bytes honouring a single `Range: bytes=a-b` (browsers need it to seek in audio)."""
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600"}
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", request.headers.get("range", "").strip())
    if not m or (not m[1] and not m[2]):
        return Response(data, media_type=media_type, headers=headers)
    size = len(data)
    start, end = (int(m[1]), int(m[2]) if m[2] else size - 1) if m[1] else (max(0, size - int(m[2])), size - 1)
    if start >= size or start > end:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    end = min(end, size - 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(data[start : end + 1], status_code=206, media_type=media_type, headers=headers)
