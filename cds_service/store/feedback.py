"""Card feedback (CDS Hooks 2.0, section Feedback): which cards clinicians accepted or
overrode, and why. This is how clinical informaticists learn which rules help and which annoy.

The store's tables, through SQLAlchemy Core so SQLite (the embedded default) and PostgreSQL both work:
- `issued_card`: each card uuid we returned, with its rule, service and suggestion uuids. Written
  only when a hook call returns cards, so a feedback item can be tied back to its rule.
- `card_feedback`: one row per (card, outcome, timestamp); a client resending the same report is
  absorbed, as the spec asks.
- `unmatched_feedback`: feedback on a card uuid `issued_card` does not know, kept rather than
  dropped (another deployment's card, one issued before a store reset, or one whose recording failed).
- `hook_call` and `card_event`: governance's call log (cds_service/store/governance.py), one row
  per answered hook call and one per card a rule made in it. They are defined here, beside the
  feedback tables, because storing feedback reads `card_event`.
- `patient_feedback`: what suppression needs of each feedback row, keyed by patient hash: the
  card's rule, rule version, evidence fingerprint, hook and draft orders (from its issued
  `card_event` row) with the outcome and when it arrived. It is written in the feedback item's
  transaction, so the suppression lookup of a hook call starts from the patient's (rare)
  feedback instead of from every card the chart was ever shown (one `card_event` row per card
  per opening), and its cost does not grow with how often the chart was opened.
Free-text `userComment` may hold patient details, so it is stored only when configured.

The schema comes from the Alembic migrations in `cds_service/store/migrations/`, never from this
module at request time. A 200 to a feedback call is sent only after every item's transaction
has committed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

log = logging.getLogger(__name__)

metadata = MetaData()
issued_card = Table(
    "issued_card",
    metadata,
    Column("card_uuid", String(36), primary_key=True),
    Column("rule_id", String(32), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("hook", String(32), nullable=False),
    Column("suggestion_uuids", Text, nullable=False),  # JSON array
    Column("issued_at", DateTime(timezone=True), nullable=False),
)
card_feedback = Table(
    "card_feedback",
    metadata,
    Column("card_uuid", String(36), nullable=False),
    Column("rule_id", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestions", Text, nullable=False),  # JSON array of suggestion uuids
    Column("reason_system", String(255)),
    Column("reason_code", String(64)),
    Column("user_comment", Text),
    Column("outcome_timestamp", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="one_report_per_outcome"),
)
unmatched_feedback = Table(
    "unmatched_feedback",
    metadata,
    Column("service_id", String(64), nullable=False),
    Column("card_uuid", String(36), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestions", Text, nullable=False),  # JSON array, as sent
    Column("reason_system", String(255)),
    Column("reason_code", String(64)),
    Column("user_comment", Text),
    Column("outcome_timestamp", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("service_id", "card_uuid", "outcome", "outcome_timestamp", name="one_unmatched_report"),
)


hook_call = Table(
    "hook_call",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("called_at", DateTime(timezone=True), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("hook", String(32), nullable=False),
    Column("patient_hash", String(64), nullable=False),
    Column("cards_issued", Integer, nullable=False),
    Column("silent", Integer, nullable=False),
    Column("suppressed", Integer, nullable=False),
    Column("knowledge_version", String(40), nullable=False),
    Column("service_version", String(32), nullable=False),
)
card_event = Table(
    "card_event",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_id", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("card_uuid", String(36)),
    Column("rule_id", String(32), nullable=False),
    Column("rule_version", Integer, nullable=False),
    Column("knowledge_version", String(40), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("hook", String(32), nullable=False),
    Column("indicator", String(16), nullable=False),
    Column("patient_hash", String(64), nullable=False),
    Column("evidence_fingerprint", String(64), nullable=False),
    Column("draft_refs", Text, nullable=False),
    Column("reason", String(48)),
)


patient_feedback = Table(
    "patient_feedback",
    metadata,
    Column("patient_hash", String(64), nullable=False),
    Column("rule_id", String(32), nullable=False),
    Column("rule_version", Integer, nullable=False),
    Column("evidence_fingerprint", String(64), nullable=False),
    Column("hook", String(32), nullable=False),
    Column("draft_refs", Text, nullable=False),  # JSON array, as on the card_event row
    Column("card_uuid", String(36), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),  # card_event.created_at: retention
    Column("outcome", String(16), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),  # card_feedback.received_at
)

# Statements built once: constructing them per call was a measurable part of the store stage.
_ISSUED_BY_UUID = select(issued_card.c.rule_id, issued_card.c.suggestion_uuids).where(
    issued_card.c.card_uuid == bindparam("card"), issued_card.c.service_id.in_(bindparam("services", expanding=True))
)
_INSERT_ISSUED = insert(issued_card)
_INSERT_FEEDBACK = insert(card_feedback)
_INSERT_UNMATCHED = insert(unmatched_feedback)
# the feedback's patient_feedback row(s), copied from the card's issued card_event row in one statement
_PATIENT_FEEDBACK_COLUMNS = (
    "patient_hash",
    "rule_id",
    "rule_version",
    "evidence_fingerprint",
    "hook",
    "draft_refs",
    "card_uuid",
    "issued_at",
    "outcome",
    "received_at",
)
_INSERT_PATIENT_FEEDBACK = insert(patient_feedback).from_select(
    list(_PATIENT_FEEDBACK_COLUMNS),
    select(
        card_event.c.patient_hash,
        card_event.c.rule_id,
        card_event.c.rule_version,
        card_event.c.evidence_fingerprint,
        card_event.c.hook,
        card_event.c.draft_refs,
        card_event.c.card_uuid,
        card_event.c.created_at,
        bindparam("outcome", type_=String(16)),
        bindparam("received_at", type_=DateTime(timezone=True)),
    ).where(card_event.c.card_uuid == bindparam("card"), card_event.c.kind == "issued"),
)


class BadFeedback(Exception):
    """400: the body is not a CDS Hooks feedback document."""


class StoreUnavailable(Exception):
    """503: the feedback database cannot be reached."""


@dataclass(frozen=True)
class FeedbackItem:
    card: str
    outcome: str
    accepted: tuple[str, ...]
    reason_system: str | None
    reason_code: str | None
    comment: str | None
    timestamp: datetime


def parse_feedback(body) -> list[FeedbackItem]:
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list) or not body["feedback"]:
        raise BadFeedback('the body must be {"feedback": [ ... ]} with at least one item')
    if len(body["feedback"]) > 500:
        raise BadFeedback("at most 500 feedback items per call")
    return [_item(raw, i) for i, raw in enumerate(body["feedback"])]


def _item(raw, i: int) -> FeedbackItem:
    where = f"feedback[{i}]"
    if not isinstance(raw, dict):
        raise BadFeedback(f"{where} must be an object")
    card, outcome = raw.get("card"), raw.get("outcome")
    if not isinstance(card, str) or not 0 < len(card) <= 36:
        raise BadFeedback(f"{where}.card must be the card's uuid")
    if outcome not in ("accepted", "overridden"):
        raise BadFeedback(f"{where}.outcome must be 'accepted' or 'overridden'")
    accepted = raw.get("acceptedSuggestions", [])
    if (
        not isinstance(accepted, list)
        or not all(isinstance(a, dict) and isinstance(a.get("id"), str) for a in accepted)
        or (outcome == "accepted" and not accepted)
    ):
        raise BadFeedback(f'{where}.acceptedSuggestions must be a non-empty array of {{"id": uuid}} when accepted')
    reason = raw.get("overrideReason")
    coding: dict[str, str] = {}
    comment = None
    if reason is not None:
        if not isinstance(reason, dict):
            raise BadFeedback(f"{where}.overrideReason must be an object")
        coding = reason.get("reason") or {}
        comment = reason.get("userComment")
        if not isinstance(coding, dict) or not all(isinstance(coding.get(k, ""), str) for k in ("system", "code")):
            raise BadFeedback(f"{where}.overrideReason.reason must be a Coding")
        if comment is not None and not isinstance(comment, str):
            raise BadFeedback(f"{where}.overrideReason.userComment must be a string")
    return FeedbackItem(
        card,
        outcome,
        tuple(a["id"][:64] for a in accepted),
        (coding.get("system") or None),
        (coding.get("code") or None),
        comment,
        _timestamp(raw.get("outcomeTimestamp"), where),
    )


def _timestamp(value, where: str) -> datetime:
    """RFC 3339 with a zone; fromisoformat does not take lower-case t/z, so upper-case first."""
    if not isinstance(value, str):
        raise BadFeedback(f"{where}.outcomeTimestamp is required (RFC 3339 date-time)")
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:
        raise BadFeedback(f"{where}.outcomeTimestamp is not an RFC 3339 date-time") from None
    if parsed.tzinfo is None:
        raise BadFeedback(f"{where}.outcomeTimestamp needs a time zone")
    return parsed.astimezone(UTC)


def _sqlite_wal(dbapi_connection, _record) -> None:
    """WAL lets gunicorn workers write concurrently and makes a commit ~10x cheaper (no fsync
    per commit with synchronous=NORMAL); this is bookkeeping on the hook's hot path.
    A committed transaction is in the WAL file when the call returns, so killing every
    process loses nothing; a power loss or OS crash can lose the commits since the last
    WAL sync (at a checkpoint), never corrupt the database."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class CardLedger:
    """Issued cards and their feedback. One engine per process: gunicorn forks after the app is
    built (--preload), and a connection pool must never cross a fork."""

    def __init__(self, url: str, store_comments: bool = False, schema_check=None):
        self.url = url
        self.store_comments = store_comments
        self._schema_check = schema_check  # pending start-up check when the store was unreachable then
        self._engine: Engine | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def engine(self):
        """The process's engine; StoreUnavailable while a pending schema check cannot pass."""
        with self._lock:
            if self._schema_check is not None:
                try:
                    self._schema_check()
                except Exception as exc:  # unreachable still, or a schema this build did not make
                    raise StoreUnavailable(f"feedback store schema not verified: {type(exc).__name__}") from exc
                self._schema_check = None
            if self._engine is None or self._pid != os.getpid():
                if self.url.startswith("sqlite:///") and not self.url.startswith("sqlite:////"):
                    Path(self.url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(self.url, pool_pre_ping=True)
                if engine.dialect.name == "sqlite":
                    event.listen(engine, "connect", _sqlite_wal)
                self._engine, self._pid = engine, os.getpid()
            return self._engine

    def close(self) -> None:
        """Return pooled connections (tests, shutdown)."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def record_issued(self, service_id: str, hook: str, cards: list[dict]) -> None:
        """Remember which rule made each card. A failure is logged, never fails the hook call:
        advice matters more than its bookkeeping. (With governance on, the cards are recorded in
        the call log's transaction instead: `insert_issued`.)"""
        try:
            with self.engine().begin() as conn:
                self.insert_issued(conn, service_id, hook, cards, datetime.now(UTC))
        except (SQLAlchemyError, StoreUnavailable) as exc:
            log.warning("could not record issued cards: %s", type(exc).__name__)

    @staticmethod
    def insert_issued(conn, service_id: str, hook: str, cards: list[dict], now: datetime) -> None:
        """The issued_card rows of `cards`, in the caller's transaction (one multi-row INSERT)."""
        if not cards:
            return
        conn.execute(
            _INSERT_ISSUED,
            [
                {
                    "card_uuid": card["uuid"],
                    "rule_id": card["extension"]["org.legmove-cds.explanation"]["rule"],
                    "service_id": service_id,
                    "hook": hook,
                    "issued_at": now,
                    "suggestion_uuids": json.dumps([s["uuid"] for s in card.get("suggestions", [])]),
                }
                for card in cards
            ],
        )

    def record_feedback(
        self, endpoint_id: str, service_ids: tuple[str, ...], items: list[FeedbackItem]
    ) -> dict[str, int]:
        """`endpoint_id`: the service id whose feedback URL was called; `service_ids`: the ids whose
        cards it accepts (its own, or an alias's targets). Unknown cards are kept in unmatched_feedback."""
        counts = {"stored": 0, "repeated": 0, "unknown_card": 0}
        now = datetime.now(UTC)
        try:
            for item in items:
                counts[self._store(endpoint_id, service_ids, item, now)] += 1
        except SQLAlchemyError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        return counts

    def _store(self, endpoint_id: str, service_ids: tuple[str, ...], item: FeedbackItem, now: datetime) -> str:
        """One transaction per item, so a repeated report rolls back alone."""
        try:
            with self.engine().begin() as conn:
                return self._insert(conn, endpoint_id, service_ids, item, now)
        except IntegrityError:
            return "repeated"

    def _insert(self, conn, endpoint_id: str, service_ids: tuple[str, ...], item: FeedbackItem, now: datetime) -> str:
        issued = conn.execute(_ISSUED_BY_UUID, {"card": item.card, "services": list(service_ids)}).first()
        if issued is None:  # another deployment's card, one issued before a store reset, or never recorded
            conn.execute(
                _INSERT_UNMATCHED,
                {
                    "service_id": endpoint_id,
                    "card_uuid": item.card,
                    "outcome": item.outcome,
                    "accepted_suggestions": json.dumps(list(item.accepted)),
                    "reason_system": item.reason_system,
                    "reason_code": item.reason_code,
                    "user_comment": item.comment if self.store_comments else None,
                    "outcome_timestamp": item.timestamp,
                    "received_at": now,
                },
            )
            return "unknown_card"
        offered = set(json.loads(issued.suggestion_uuids))
        accepted = [s for s in item.accepted if s in offered]
        row = {
            "card_uuid": item.card,
            "rule_id": issued.rule_id,
            "outcome": item.outcome,
            "accepted_suggestions": json.dumps(accepted),
            "reason_system": item.reason_system,
            "reason_code": item.reason_code,
            "user_comment": item.comment if self.store_comments else None,
            "outcome_timestamp": item.timestamp,
            "received_at": now,
        }
        conn.execute(_INSERT_FEEDBACK, row)  # a repeated report fails here, before its patient_feedback row
        conn.execute(_INSERT_PATIENT_FEEDBACK, {"card": item.card, "outcome": item.outcome, "received_at": now})
        return "stored"

    def feedback_for(self, card_uuid: str) -> list[dict]:
        """For tests and reports."""
        with self.engine().connect() as conn:
            rows = conn.execute(select(card_feedback).where(card_feedback.c.card_uuid == card_uuid)).mappings().all()
        return [dict(row) for row in rows]

    def unmatched_for(self, card_uuid: str) -> list[dict]:
        """Feedback kept for a card uuid the store did not know (tests and reports)."""
        with self.engine().connect() as conn:
            rows = (
                conn.execute(select(unmatched_feedback).where(unmatched_feedback.c.card_uuid == card_uuid))
                .mappings()
                .all()
            )
        return [dict(row) for row in rows]
