"""The review workflow: hand out items honouring the overlap, record decisions, find and settle conflicts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, TypeVar

from sqlalchemy import and_, exists, func, insert, literal, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from pallm.review.guidelines import GUIDELINE_VERSION
from pallm.review.models import DECISIONS, EDITABLE, REASONS, Adjudication, Assignment, Decision, Item, User, now

#: An item handed out and not decided within this time goes back to the queue.
CLAIM_TTL = timedelta(hours=2)
Status = Literal["pending", "agreed", "conflict", "adjudicated"]
_D = TypeVar("_D", Decision, Adjudication)


class Refused(Exception):
    """A save the store will not make; the message says why and what to do."""


class Stale(Refused):
    """Someone saved this decision since the form was opened (optimistic concurrency)."""


@dataclass
class DecisionInput:
    """What a labeler submits: decision, edited texts (only those changed), reasons, comment, the version seen."""

    decision: str
    edits: dict[str, str] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    comment: str = ""
    version: int = 0

    def validate(self, item: Item) -> dict[str, str | None]:
        """Check the input against the item; returns the edited texts to store (null where unchanged)."""
        if self.decision not in DECISIONS:
            raise Refused(f"decision must be one of {', '.join(DECISIONS)}")
        unknown = sorted(set(self.reasons) - set(REASONS))
        if unknown:
            raise Refused(f"unknown reason code(s): {', '.join(unknown)}")
        if self.decision == "reject" and not self.reasons:
            raise Refused("a rejection needs at least one reason")
        if self.decision != "reject" and self.reasons:
            raise Refused("reasons are for rejections only")
        texts: dict[str, str | None] = dict.fromkeys(EDITABLE)
        if self.decision == "edit":
            for k, v in self.edits.items():
                if k not in EDITABLE:
                    raise Refused(f"{k} cannot be edited")
                v = v.replace("\r\n", "\n").strip()
                if v and v != (getattr(item, k) or "").strip():
                    texts[k] = v
            if not any(texts.values()):
                raise Refused("nothing was edited: change a text, or accept")
        if len(self.comment) > 4000:
            raise Refused("the comment is longer than 4000 characters")
        return texts


def _active_claims(item_id: object, cutoff: object) -> object:
    """Assignments of an item that count toward its overlap: decided, or claimed recently."""
    decided = exists().where(Decision.item_id == Assignment.item_id, Decision.user_id == Assignment.user_id)
    return (
        select(func.count())
        .where(Assignment.item_id == item_id, or_(Assignment.claimed_at >= cutoff, decided))
        .scalar_subquery()
    )


def next_item(db: Session, user: User, dataset: str | None = None) -> Item | None:
    """The item this annotator should do next: one they hold undone, else a new claim on an item still short of
    its overlap (items others started first, then flagged items, then the sample); None when the queue is empty."""
    cutoff = now() - CLAIM_TTL
    undecided = ~exists().where(Decision.item_id == Assignment.item_id, Decision.user_id == user.id)
    held = db.scalar(
        select(Item)
        .join(Assignment, Assignment.item_id == Item.id)
        .where(Assignment.user_id == user.id, Assignment.claimed_at >= cutoff, undecided)
        .where(Item.dataset == dataset if dataset else True)
        .order_by(Assignment.claimed_at)
        .limit(1)
    )
    if held is not None:
        return held
    claims = _active_claims(Item.id, cutoff)
    mine = exists().where(Assignment.item_id == Item.id, Assignment.user_id == user.id)
    postgres = db.get_bind().dialect.name == "postgresql"
    query = (
        select(Item)
        .where(~mine, claims < Item.overlap)
        .where(Item.dataset == dataset if dataset else True)
        .order_by((claims > 0).desc(), Item.priority, Item.id)
    )
    # PostgreSQL: lock the first free item and skip items others are claiming right now, so concurrent
    # annotators take different items without waiting. SQLite has no row locks; there the claim below is a
    # single statement, which SQLite runs under its write lock, so a lost race costs one more round.
    query = query.limit(1)
    if postgres:
        query = query.with_for_update(skip_locked=True, of=Item)
    for _ in range(100):  # a round fails only when others took the item's last place in the meantime
        item = db.scalar(query)
        if item is None:
            db.rollback()
            return None
        if not postgres:
            db.rollback()  # the claim must read the newest state, not this read's snapshot
        free = select(literal(item.id), literal(user.id), literal(now())).where(
            _active_claims(item.id, cutoff) < item.overlap
        )
        try:
            # SQLAlchemy reports an INSERT's row count only when asked to keep it (else it may say anything).
            claim = insert(Assignment).from_select(["item_id", "user_id", "claimed_at"], free)
            claimed = db.connection().execute(claim.execution_options(preserve_rowcount=True)).rowcount
            db.commit()
        except IntegrityError:  # the same annotator claiming it from two tabs at once
            db.rollback()
            claimed = 0
        if claimed == 1:
            return item
    return None


def may_open(db: Session, user: User, item: Item) -> bool:
    """Annotators see the items handed to them; reviewers and admins see every item."""
    if user.role in ("reviewer", "admin"):
        return True
    return (
        db.scalar(select(Assignment.id).where(Assignment.item_id == item.id, Assignment.user_id == user.id)) is not None
    )


def save_decision(db: Session, user: User, item: Item, given: DecisionInput) -> Decision:
    """Record (or change) this user's decision; refuses a save based on an outdated version."""
    texts = given.validate(item)
    if user.role == "annotator" and not may_open(db, user, item):
        raise Refused("this item is not in your queue")
    row = db.scalar(select(Decision).where(Decision.item_id == item.id, Decision.user_id == user.id))
    return _save(db, user, item, row, Decision, given, texts)


def adjudicate(db: Session, user: User, item: Item, given: DecisionInput) -> Adjudication:
    """Record (or change) the reviewer's final decision on an item."""
    if user.role not in ("reviewer", "admin"):
        raise Refused("only reviewers adjudicate")
    texts = given.validate(item)
    row = db.scalar(select(Adjudication).where(Adjudication.item_id == item.id))
    return _save(db, user, item, row, Adjudication, given, texts)


def _save(
    db: Session, user: User, item: Item, row: _D | None, kind: type[_D], given: DecisionInput,
    texts: dict[str, str | None],
) -> _D:  # fmt: skip
    if (row is None and given.version != 0) or (row is not None and row.version != given.version):
        who = "" if row is None else f" by {db.get(User, row.user_id).name} at {row.updated_at:%H:%M:%S}"
        raise Stale(f"this decision was saved{who} after you opened the item; reload to see it, then decide again")
    values = dict(
        decision=given.decision, reasons=sorted(given.reasons), comment=given.comment.strip(),
        guideline_version=GUIDELINE_VERSION, updated_at=now(), **texts,
    )  # fmt: skip
    if row is None:
        row = kind(item_id=item.id, user_id=user.id, **values)
        db.add(row)
    else:
        for k, v in values.items():
            setattr(row, k, v)
        row.user_id = user.id
    try:
        db.commit()
    except (IntegrityError, StaleDataError) as e:
        db.rollback()
        raise Stale("someone saved this decision at the same moment; reload to see it, then decide again") from e
    return row


def disagree(decisions: Sequence[Decision]) -> bool:
    """Whether annotators' decisions on one item conflict: different decisions, or different edits."""
    if len({d.decision for d in decisions}) > 1:
        return True
    edits = {tuple(getattr(d, k) for k in EDITABLE) for d in decisions if d.decision == "edit"}
    return len(edits) > 1


def status(item: Item, decisions: Sequence[Decision], adjudication: Adjudication | None) -> Status:
    if adjudication is not None:
        return "adjudicated"
    if len(decisions) < item.overlap:
        return "conflict" if len(decisions) > 1 and disagree(decisions) else "pending"
    return "conflict" if disagree(decisions) else "agreed"


def final(
    item: Item, decisions: Sequence[Decision], adjudication: Adjudication | None
) -> Decision | Adjudication | None:
    """The decision that counts for training: the adjudication, else the annotators' agreed decision."""
    s = status(item, decisions, adjudication)
    if s == "adjudicated":
        return adjudication
    if s == "agreed":
        return min(decisions, key=lambda d: d.id)
    return None


def decisions_by_item(db: Session, items: Sequence[Item]) -> dict[int, list[Decision]]:
    found: dict[int, list[Decision]] = {i.id: [] for i in items}
    for d in db.scalars(select(Decision).where(Decision.item_id.in_(list(found))).order_by(Decision.id)):
        found[d.item_id].append(d)
    return found


def conflicts(db: Session, dataset: str | None = None) -> list[Item]:
    """Items whose annotators disagree and that no reviewer has settled yet."""
    several = select(Decision.item_id).group_by(Decision.item_id).having(func.count() > 1)
    items = db.scalars(
        select(Item)
        .where(Item.id.in_(several), ~exists().where(Adjudication.item_id == Item.id))
        .where(Item.dataset == dataset if dataset else True)
        .order_by(Item.priority, Item.id)
    ).all()
    by_item = decisions_by_item(db, items)
    return [i for i in items if disagree(by_item[i.id])]


def progress(db: Session) -> dict[str, object]:
    """Counts for the progress page: items by status and dataset, decisions per labeler."""
    items = db.scalars(select(Item).order_by(Item.id)).all()
    by_item = decisions_by_item(db, items)
    adj = {a.item_id: a for a in db.scalars(select(Adjudication))}
    datasets: dict[str, dict[str, int]] = {}
    for i in items:
        row = datasets.setdefault(i.dataset, {"items": 0, "pending": 0, "agreed": 0, "conflict": 0, "adjudicated": 0})
        row["items"] += 1
        row[status(i, by_item[i.id], adj.get(i.id))] += 1
    people = db.execute(
        select(User.name, User.role, Decision.decision, func.count())
        .join(Decision, and_(Decision.user_id == User.id), isouter=True)
        .group_by(User.name, User.role, Decision.decision)
        .order_by(User.name)
    ).all()
    labelers: dict[str, dict[str, object]] = {}
    for name, role, decision, n in people:
        row = labelers.setdefault(name, {"role": role, "accept": 0, "edit": 0, "reject": 0, "total": 0})
        if decision:
            row[decision] = n
            row["total"] = int(row["total"]) + n
    return {"datasets": datasets, "labelers": labelers}
