"""CDS governance: rule modes, versions on record, the call log, and suppression.

A CDS committee asks "how often would this rule fire, how often is it overridden, and why?";
clinicians ask "stop showing me what I already dismissed". This module answers both from one
store, the feedback database (same URL, same Alembic migrations):

- Rule modes. Each card rule is `active` (cards shown), `silent` (evaluated and recorded as
  "would have fired", never shown) or `off` (not compiled) by `RULE_MODES`; a rule not named
  there follows `ENABLED_RULES` / its on-by-default flag.
- The call log. Every answered hook call is a `hook_call` row (service, hook, keyed patient hash,
  time, cards issued, silent and suppressed counts); every card a rule made in it is a
  `card_event` row with its rule version, knowledge version and evidence fingerprint. Feedback
  joins to its card by uuid, so it keeps the versions the card was made with.
- Suppression. A card overridden for a patient is not shown again for that patient for
  `suppress_overridden_days`, a card with an accepted suggestion for `suppress_accepted_days`
  (both knowledge settings, per rule in `suppress_days_by_rule`), and a card answered at
  order-select is not repeated at order-sign for the same draft (`order_sign_dedup_hours`).
  All three need the same rule, the same rule version and the same evidence fingerprint: a new
  value, a new draft, a changed condition or a new version of the rule shows the card again.
  `critical` cards are never suppressed. The decision reads the database, so every process
  sharing it decides alike. It reads `patient_feedback` (what the decision needs of each
  feedback item on an issued card, keyed by patient hash, written when the feedback is stored),
  never the call log: its cost follows the patient's feedback, which is rare, not the number of
  times the chart was opened (each opening adds `card_event` rows).
- Cost. One connection and one transaction per call: the suppression read, then the call and its
  card events (and, from the web layer, the issued cards), committed before the call answers.
  Statements are built once at import; per call only their parameters change.

Patients appear only as HMAC-SHA256(PATIENT_HASH_KEY, fhirServer | patient id): the key is
configuration, the same on every instance, never stored. If the store cannot be read, every card
is shown (advice never disappears because its bookkeeping failed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata as package_metadata
from pathlib import Path

from sqlalchemy import bindparam, delete, insert, or_, select
from sqlalchemy.engine import Connection, RootTransaction
from sqlalchemy.exc import SQLAlchemyError

from cds_service.authoring.rulebook import CARD, RuleSpec
from cds_service.cards.render import EXTENSION_KEY
from cds_service.knowledge.settings import Settings
from cds_service.store.feedback import (
    CardLedger,
    StoreUnavailable,
    card_event,
    card_feedback,
    hook_call,
    issued_card,
    patient_feedback,
    unmatched_feedback,
)

log = logging.getLogger(__name__)

MODES = ("active", "silent", "off")
DEVELOPMENT_KEY = "legmove-development-patient-hash-key"
KNOWLEDGE_DIR = Path(__file__).resolve().parents[1] / "knowledge"

# Recording: INSERTs built once and given plain parameter dicts. `insert(...).values(...)` per
# call built a new statement and its cache key every time (about a third of the recording's CPU).
_INSERT_CALL = insert(hook_call)
_INSERT_EVENTS = insert(card_event)

# The suppression lookup: the patient's feedback within the longest window (patient_feedback,
# written with each feedback item), newest first (the newest feedback decides). It reads no
# card_event row, so a chart opened thousands of times costs what a new one does. Rule, version
# and fingerprint are matched per card in Python, as before: feedback on one patient is a handful
# of rows, and an IN list of expanding parameters cost more to render per call than the rows it
# would filter. Built once with bind parameters; per call only the values change.
_FEEDBACK_FOR_PATIENT = (
    select(
        patient_feedback.c.rule_id,
        patient_feedback.c.rule_version,
        patient_feedback.c.evidence_fingerprint,
        patient_feedback.c.hook,
        patient_feedback.c.draft_refs,
        patient_feedback.c.outcome,
        patient_feedback.c.received_at,
    )
    .where(patient_feedback.c.patient_hash == bindparam("who"), patient_feedback.c.received_at >= bindparam("since"))
    .order_by(patient_feedback.c.received_at.desc())
)


class GovernanceConfigError(Exception):
    """A rule mode or the patient hash key is missing or wrong: start-up stops."""


def service_version() -> str:
    """The installed package's version (pyproject.toml), as discovery and the call log carry it."""
    try:
        return package_metadata.version("legmove-cds")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def knowledge_version(overrides: dict) -> str:
    """A hash of the knowledge files (code sets, drugs, labs, product table, settings) and of the
    deployment's KNOWLEDGE_OVERRIDES: two services answer alike exactly when this matches.

    JSON files are hashed as data without their `_about` notes, so rewording a note (documentation)
    does not make governance treat the knowledge as changed."""
    digest = hashlib.sha256()
    for path in sorted(KNOWLEDGE_DIR.iterdir()):
        if path.suffix == ".json":
            content = json.dumps(_without_notes(json.loads(path.read_bytes())), sort_keys=True).encode()
        elif path.suffix == ".csv":
            content = path.read_bytes()
        else:
            continue
        digest.update(path.name.encode() + b"\0" + content + b"\0")
    digest.update(json.dumps(overrides or {}, sort_keys=True, default=str).encode())
    return "kb-" + digest.hexdigest()[:16]


def _without_notes(value):
    """`value` with every `_about` key removed, at any depth."""
    if isinstance(value, dict):
        return {k: _without_notes(v) for k, v in value.items() if k != "_about"}
    if isinstance(value, list):
        return [_without_notes(v) for v in value]
    return value


def rule_modes(registry: dict[str, RuleSpec], config) -> dict[str, str]:
    """Mode of every card rule: RULE_MODES where set, else active when ENABLED_RULES (or, without
    it, the rule's on-by-default flag) says so, else off."""
    modes = config.get("RULE_MODES") or {}
    if not isinstance(modes, dict):
        raise GovernanceConfigError('RULE_MODES must be an object such as {"R3": "silent"}')
    cards = {spec.id for spec in registry.values() if spec.stratum == CARD}
    unknown = sorted(set(modes) - cards)
    if unknown:
        raise GovernanceConfigError(f"RULE_MODES names rules that are not card rules: {unknown}")
    bad = {rule: mode for rule, mode in modes.items() if mode not in MODES}
    if bad:
        raise GovernanceConfigError(f"RULE_MODES values must be one of {list(MODES)}: {bad}")
    enabled = config.get("ENABLED_RULES")
    out = {}
    for rule in sorted(cards):
        default_on = rule in enabled if enabled is not None else registry[rule].enabled_by_default
        out[rule] = modes.get(rule, "active" if default_on else "off")
    return out


def patient_key(config) -> bytes:
    """The HMAC key. Production has no default: the service refuses to start without one."""
    key = config.get("PATIENT_HASH_KEY")
    if not key or not isinstance(key, str):
        raise GovernanceConfigError(
            "PATIENT_HASH_KEY is not set: set LEGMOVE_PATIENT_HASH_KEY to a long random secret, "
            "the same on every instance (patients are recorded only as a hash keyed with it)"
        )
    if len(key) < 16:
        raise GovernanceConfigError(
            "PATIENT_HASH_KEY is too short: use at least 16 characters of a random secret "
            "(a short key lets patient ids be guessed from their hashes)"
        )
    if key == DEVELOPMENT_KEY:
        log.warning(
            "PATIENT_HASH_KEY is the public development key: patient hashes in the governance log can be "
            "reversed by anyone with a list of patient ids; set LEGMOVE_PATIENT_HASH_KEY outside development"
        )
    return key.encode("utf-8")


def patient_hash(key: bytes, patient_id: str, fhir_server: str | None) -> str:
    """Keyed, so the hash cannot be recomputed from a patient id without the key. The FHIR
    server is part of it: two EHRs may both have a Patient/123."""
    message = f"{(fhir_server or '').rstrip('/')}|{patient_id}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass
class Outcome:
    """What governance did to one call's cards."""

    cards: list[dict]  # shown
    suppressed: list[dict] = field(default_factory=list)  # {"rule", "reason"} per card not shown
    silent: list[str] = field(default_factory=list)  # rules that would have fired


def _explanation(card: dict) -> dict:
    return card["extension"][EXTENSION_KEY]


def _utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without a zone; they were written in UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Governance:
    """Records calls and cards and decides suppression, on the feedback store's engine."""

    def __init__(
        self,
        ledger: CardLedger,
        key: bytes,
        settings: Settings,
        knowledge: str,
        clock: Callable[[], datetime] | None = None,
    ):
        self.ledger = ledger
        self.key = key
        self.settings = settings
        self.knowledge_version = knowledge
        self.service_version = service_version()
        self.clock = clock or (lambda: datetime.now(UTC))  # tests move it to see suppressions expire

    # ---- windows -------------------------------------------------------------------------

    def window(self, rule_id: str, outcome: str) -> timedelta:
        """How long feedback of this outcome keeps a rule's card away (per rule, else default)."""
        per_rule = self.settings.suppress_days_by_rule.get(rule_id, {})
        default = (
            self.settings.suppress_overridden_days if outcome == "overridden" else self.settings.suppress_accepted_days
        )
        return timedelta(days=float(per_rule.get(outcome, default)))

    def _dedup_window(self) -> timedelta:
        return timedelta(hours=float(self.settings.order_sign_dedup_hours))

    # ---- one hook call -------------------------------------------------------------------

    def apply(
        self,
        service_id: str,
        hook: str,
        patient_id: str,
        fhir_server: str | None,
        draft_refs: set[str],
        cards: list[dict],
        silent_cards: list[dict],
        record_issued: bool = False,
    ) -> Outcome:
        """Suppress what feedback says to, record the call and every card, return what to show.
        With `record_issued`, the shown cards' issued_card rows (what feedback is matched against)
        are written in the same transaction as the call log. The suppression read runs in that
        transaction too: one connection and one commit per call (the commit is done before this
        returns, so an answered call's rows are committed). If the write fails, the issued rows
        are tried on their own, so feedback on a shown card still finds its rule whenever the
        store can write.

        On SQLite the read does not hold a snapshot into the write: the driver opens the
        transaction at the first INSERT, so the read sees the newest commits and the write waits
        for the lock like any other (no SQLITE_BUSY from upgrading a stale read transaction)."""
        now = self.clock()
        who = patient_hash(self.key, patient_id, fhir_server)
        conn: Connection | None = None
        transaction: RootTransaction | None = None
        try:
            try:
                conn = self.ledger.engine().connect()
                transaction = conn.begin()
                reasons = self._suppression(conn, who, hook, cards, draft_refs, now)
            except (SQLAlchemyError, StoreUnavailable) as exc:
                log.warning("suppression not checked, every card shown: %s", type(exc).__name__)
                reasons = {}
                if conn is not None:
                    conn.close()  # rolls back; a connection that failed is not reused for the write
                    conn = transaction = None
            shown = [card for card in cards if card["uuid"] not in reasons]
            outcome = Outcome(
                shown,
                [
                    {"rule": _explanation(c)["rule"], "reason": reasons[c["uuid"]]}
                    for c in cards
                    if c["uuid"] in reasons
                ],
                sorted(_explanation(c)["rule"] for c in silent_cards),
            )
            events = (
                [("issued", c, None) for c in shown]
                + [("suppressed", c, reasons[c["uuid"]]) for c in cards if c["uuid"] in reasons]
                + [("silent", c, None) for c in silent_cards]
            )
            try:
                if conn is None or transaction is None:
                    conn = self.ledger.engine().connect()
                    transaction = conn.begin()
                with transaction:  # commits here; an error rolls back before the retry below
                    self._record(conn, service_id, hook, who, now, outcome, events, draft_refs)
                    if record_issued:
                        self.ledger.insert_issued(conn, service_id, hook, shown, datetime.now(UTC))
            except (SQLAlchemyError, StoreUnavailable) as exc:
                log.warning("could not record the hook call: %s", type(exc).__name__)
                if record_issued and shown:
                    self.ledger.record_issued(service_id, hook, shown)  # logs its own failure
        finally:
            if conn is not None:
                conn.close()
        return outcome

    def _suppression(self, conn, who: str, hook: str, cards: list[dict], draft_refs: set[str], now: datetime) -> dict:
        """card uuid -> reason, for the cards earlier feedback keeps away."""
        candidates = [c for c in cards if c["indicator"] != "critical"]  # critical: never suppressed
        if not candidates:
            return {}
        rules = {_explanation(c)["rule"] for c in candidates}
        longest = max([self._dedup_window()] + [self.window(r, o) for r in rules for o in ("overridden", "accepted")])
        history = conn.execute(_FEEDBACK_FOR_PATIENT, {"who": who, "since": now - longest}).all()
        reasons = {}
        for card in candidates:
            explanation = _explanation(card)
            key = (explanation["rule"], explanation["ruleVersion"], explanation["evidenceFingerprint"])
            rule = key[0]
            mine = sorted(card_drafts(card, draft_refs))
            for row in history:
                if (row.rule_id, row.rule_version, row.evidence_fingerprint) != key:
                    continue  # another rule, another version of it (new advice), or other evidence
                age = now - _utc(row.received_at)
                if (
                    hook == "order-sign"
                    and row.hook == "order-select"
                    and mine
                    and json.loads(row.draft_refs) == mine
                    and age <= self._dedup_window()
                ):
                    reasons[card["uuid"]] = "answered-at-order-select"
                    break
                if age <= self.window(rule, row.outcome):
                    reasons[card["uuid"]] = row.outcome  # "overridden" or "accepted"
                    break
        return reasons

    def _record(
        self,
        conn,
        service_id: str,
        hook: str,
        who: str,
        now: datetime,
        outcome: Outcome,
        events: list,
        draft_refs: set[str],
    ) -> None:
        """The call and its card events, in the caller's transaction."""
        call_id = conn.execute(
            _INSERT_CALL,
            {
                "called_at": now,
                "service_id": service_id,
                "hook": hook,
                "patient_hash": who,
                "cards_issued": len(outcome.cards),
                "silent": len(outcome.silent),
                "suppressed": len(outcome.suppressed),
                "knowledge_version": self.knowledge_version,
                "service_version": self.service_version,
            },
        ).inserted_primary_key[0]
        rows = [
            {
                "call_id": call_id,
                "created_at": now,
                "kind": kind,
                "card_uuid": card["uuid"] if kind == "issued" else None,
                "rule_id": _explanation(card)["rule"],
                "rule_version": _explanation(card)["ruleVersion"],
                "knowledge_version": self.knowledge_version,
                "service_id": service_id,
                "hook": hook,
                "indicator": card["indicator"],
                "patient_hash": who,
                "evidence_fingerprint": _explanation(card)["evidenceFingerprint"],
                "draft_refs": json.dumps(sorted(card_drafts(card, draft_refs))),
                "reason": reason,
            }
            for kind, card, reason in events
        ]
        if rows:
            conn.execute(_INSERT_EVENTS, rows)  # one executemany

    def prune(self, days: float) -> dict[str, int]:
        return prune_rows(self.ledger.engine(), self.clock(), days)


def prune_rows(engine, now: datetime, days: float) -> dict[str, int]:
    """Retention: delete call, card and feedback rows older than `days` (RETENTION_DAYS), and the
    patient_feedback rows of the card or feedback rows deleted; returns the rows deleted per table.
    Suppression windows longer than this end early."""
    cutoff = now - timedelta(days=float(days))
    removed = {}
    with engine.begin() as conn:
        for table, column in (
            (hook_call, hook_call.c.called_at),
            (card_event, card_event.c.created_at),
            (issued_card, issued_card.c.issued_at),
            (card_feedback, card_feedback.c.received_at),
            (unmatched_feedback, unmatched_feedback.c.received_at),
        ):
            removed[table.name] = conn.execute(delete(table).where(column < cutoff)).rowcount
        # a patient_feedback row stands for a card_event row joined to a card_feedback row: it goes
        # when either of them goes, so suppression ends exactly when the join it replaces would
        removed[patient_feedback.name] = conn.execute(
            delete(patient_feedback).where(
                or_(patient_feedback.c.issued_at < cutoff, patient_feedback.c.received_at < cutoff)
            )
        ).rowcount
    return removed


def check_windows(settings: Settings) -> None:
    """Suppression windows are checked at start-up, so a typo never fails a hook call (their types
    already were, when the settings were built: cds_service.knowledge.settings)."""

    def number(value, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 36500:
            raise GovernanceConfigError(
                f"{where} must be a number of days (hours for order_sign_dedup_hours) from 0, got {value!r}"
            )

    for key in ("suppress_overridden_days", "suppress_accepted_days", "order_sign_dedup_hours"):
        number(getattr(settings, key), key)
    by_rule = settings.suppress_days_by_rule
    if not isinstance(by_rule, Mapping):
        raise GovernanceConfigError('suppress_days_by_rule must be an object like {"R3": {"overridden": 7}}')
    for rule, windows in by_rule.items():
        if not isinstance(windows, Mapping) or set(windows) - {"overridden", "accepted"}:
            raise GovernanceConfigError(f"suppress_days_by_rule.{rule} may set only 'overridden' and 'accepted'")
        for outcome, value in windows.items():
            number(value, f"suppress_days_by_rule.{rule}.{outcome}")


def card_drafts(card: dict, draft_refs: set[str]) -> set[str]:
    """The draft orders of this call that the card rests on."""
    return set(_explanation(card).get("resources", [])) & draft_refs


def draft_references(draft_orders: list[dict]) -> set[str]:
    return {f"{r.get('resourceType')}/{r.get('id')}" for r in draft_orders if isinstance(r, dict) and r.get("id")}


def governance_from_config(config, ledger: CardLedger | None, terminology_settings: Settings) -> Governance | None:
    """None when the store is off (FEEDBACK_STORE null): nothing recorded, nothing suppressed."""
    if ledger is None:
        return None  # no store: no hash is ever made, so no key is needed
    check_windows(terminology_settings)
    return Governance(
        ledger, patient_key(config), terminology_settings, knowledge_version(config.get("KNOWLEDGE_OVERRIDES") or {})
    )
