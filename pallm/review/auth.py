"""Users, passwords, login sessions, CSRF tokens and the login rate limit."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from pallm.review.models import ROLES, AuthSession, LoginFailure, User, now

SESSION_DAYS = 7
#: Failed logins allowed per name, and per client address, within the window before further tries are refused.
MAX_FAILURES_PER_NAME = 5
MAX_FAILURES_PER_ADDRESS = 20
FAILURE_WINDOW = timedelta(minutes=15)
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
#: Checked against when the name is unknown, so the answer takes as long as for a known name.
_NOBODY = (
    "scrypt$16384$8$1$765f753676d33549ea6b301660112d75$369e6f83df2d4d8406ca8870fb303a06183fb48066ee60f7dfe80286f2a9830a"
)


class AuthError(Exception):
    """A login refused: wrong credentials, or too many recent failures."""


class TooManyFailures(AuthError):
    """A login refused by the rate limit, whatever the password."""


def hash_password(password: str) -> str:
    """`scrypt$n$r$p$salt$hash` (hex); scrypt is memory-hard and in the standard library."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if kind != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), dklen=32, n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(got.hex(), digest)


def add_user(db: Session, name: str, role: str, password: str) -> User:
    """Create a user, or reset the role and password of an existing one."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError("a user name is 1-64 letters, digits, '-', '_' or '.'")
    if len(password) < 8:
        raise ValueError("a password has at least 8 characters")
    user = db.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(name=name, role=role, password_hash=hash_password(password))
        db.add(user)
    else:
        user.role, user.password_hash = role, hash_password(password)
        db.execute(delete(AuthSession).where(AuthSession.user_id == user.id))  # a new password logs out
    db.commit()
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def login(
    db: Session, name: str, password: str, address: str, verify: Callable[[str, str], bool] = verify_password
) -> tuple[str, AuthSession]:
    """Check the password (after the rate limit) and open a session; returns the cookie token and the session.

    `verify(password, stored_hash)` does the hashing; the web app runs it on a small pool of its own.
    """
    since = now() - FAILURE_WINDOW
    by_name = db.scalar(select(func.count()).where(LoginFailure.name == name, LoginFailure.at >= since)) or 0
    by_addr = db.scalar(select(func.count()).where(LoginFailure.address == address, LoginFailure.at >= since)) or 0
    if by_name >= MAX_FAILURES_PER_NAME or by_addr >= MAX_FAILURES_PER_ADDRESS:
        raise TooManyFailures(
            f"too many failed logins; try again in {int(FAILURE_WINDOW.total_seconds() // 60)} minutes"
        )
    user = db.scalar(select(User).where(User.name == name))
    ok = verify(password, user.password_hash if user else _NOBODY) and user is not None
    if not ok:
        db.add(LoginFailure(name=name[:64], address=address[:64]))
        db.commit()
        raise AuthError("wrong name or password")
    db.execute(delete(LoginFailure).where(LoginFailure.name == name))
    db.execute(delete(AuthSession).where(AuthSession.expires_at < now()))
    token = secrets.token_urlsafe(32)
    session = AuthSession(
        token_sha256=_token_hash(token), user_id=user.id, csrf=secrets.token_urlsafe(32),
        expires_at=now() + timedelta(days=SESSION_DAYS),
    )  # fmt: skip
    db.add(session)
    db.commit()
    return token, session


def session_user(db: Session, token: str | None) -> tuple[User, AuthSession] | None:
    """The user and session behind a cookie token, if it is valid and not expired."""
    if not token:
        return None
    row = db.execute(
        select(User, AuthSession)
        .join(AuthSession, AuthSession.user_id == User.id)
        .where(AuthSession.token_sha256 == _token_hash(token))
    ).first()
    if row is None:
        return None
    user, session = row
    expires = session.expires_at if session.expires_at.tzinfo else session.expires_at.replace(tzinfo=UTC)
    if expires < datetime.now(UTC):
        return None
    return user, session


def logout(db: Session, token: str | None) -> None:
    if token:
        db.execute(delete(AuthSession).where(AuthSession.token_sha256 == _token_hash(token)))
        db.commit()


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected, given or "")


def can(user: User, action: str) -> bool:
    """Role checks: annotators annotate; reviewers also adjudicate and see progress; admins do everything."""
    need = {"annotate": "annotator", "adjudicate": "reviewer", "progress": "reviewer", "admin": "admin"}[action]
    return ROLES.index(user.role) >= ROLES.index(need)
