"""The review store's tables. The Alembic migrations in `migrations/versions` create exactly these."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("annotator", "reviewer", "admin")
DECISIONS = ("accept", "edit", "reject")
#: Why an item is rejected: code -> what the labeler sees.
REASONS = {
    "invented_cue": "invented cue: the rationale claims something the audio does not have",
    "lexical_shortcut": "lexical shortcut: the label is read off the words, not the voice",
    "wrong_label": "wrong label: the gold emotion does not fit what is heard",
    "bad_reply": "unhelpful or unsafe reply",
    "audio_problem": "audio problem: noise, clipping, cut off, wrong speaker",
}
#: The texts a labeler may edit, as shown on the item page.
EDITABLE = {"rationale": "Rationale", "reply": "Reply", "words_only_reply": "Words-only reply"}


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[str]: JSON,
        datetime: DateTime(timezone=True),
    }


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=now)


class AuthSession(Base):
    """A logged-in browser: the cookie holds the token, the table only its SHA-256."""

    __tablename__ = "auth_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=now)
    expires_at: Mapped[datetime]


class LoginFailure(Base):
    """One failed login; recent ones rate-limit further attempts for that name and that address."""

    __tablename__ = "login_failures"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(default=now, index=True)


class Item(Base):
    """One dataset row under review: what the item page shows, copied from the shards at import."""

    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("dataset", "row_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset: Mapped[str] = mapped_column(String(128), index=True)
    row_id: Mapped[str] = mapped_column(String(256))
    corpus: Mapped[str] = mapped_column(String(64))
    split: Mapped[str] = mapped_column(String(32))
    speaker_id: Mapped[str] = mapped_column(String(128))
    emotion: Mapped[str] = mapped_column(String(64))
    sentiment: Mapped[str | None] = mapped_column(String(32))
    duration_s: Mapped[float]
    transcript: Mapped[str | None] = mapped_column(Text)
    words: Mapped[list[Any]] = mapped_column(JSON)
    cue_words: Mapped[list[str]]
    measured: Mapped[dict[str, Any]]
    rationale: Mapped[str | None] = mapped_column(Text)
    cited_cues: Mapped[list[str]]
    teacher_label: Mapped[str | None] = mapped_column(String(64))
    reply: Mapped[str | None] = mapped_column(Text)
    words_only_reply: Mapped[str | None] = mapped_column(Text)
    flags: Mapped[list[str]]
    #: Why it was imported: the pipeline flags that send it to review, or "sample".
    why: Mapped[list[str]]
    #: 0 for flagged items (reviewed first), 1 for the sample.
    priority: Mapped[int] = mapped_column(Integer)
    overlap: Mapped[int]
    imported_at: Mapped[datetime] = mapped_column(default=now)


class ItemAudio(Base):
    """The item's audio (16 kHz WAV from the shard) and its waveform peaks; only these bytes are ever served."""

    __tablename__ = "item_audio"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    wav: Mapped[bytes] = mapped_column(LargeBinary)
    peaks: Mapped[list[Any]] = mapped_column(JSON)


class Assignment(Base):
    """An item handed to an annotator; counts toward the item's overlap until it expires undone."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    claimed_at: Mapped[datetime] = mapped_column(default=now)


class _DecisionFields:
    decision: Mapped[str] = mapped_column(String(16))
    #: Edited texts; null where the labeler kept the teacher's.
    rationale: Mapped[str | None] = mapped_column(Text)
    reply: Mapped[str | None] = mapped_column(Text)
    words_only_reply: Mapped[str | None] = mapped_column(Text)
    reasons: Mapped[list[str]]
    comment: Mapped[str] = mapped_column(Text, default="")
    guideline_version: Mapped[str] = mapped_column(String(16))
    #: Bumped on every save; a save that names an older version is refused (optimistic concurrency).
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now)


class Decision(_DecisionFields, Base):
    """One annotator's decision on one item."""

    __tablename__ = "decisions"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": _DecisionFields.version}


class Adjudication(_DecisionFields, Base):
    """A reviewer's final word on an item whose annotators disagreed (one per item)."""

    __tablename__ = "adjudications"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": _DecisionFields.version}


Index("ix_items_queue", Item.priority, Item.id)
