"""The governance report: per rule and version, how often it fired, was silent, was suppressed,
was accepted or overridden (and why), and how often per 100 patient-views.

It reads only counts from the store (`hook_call`, `card_event`, `card_feedback`): no patient id,
no patient hash and no free text reaches the report, its CSV or its chart. The command-line
entry is `legmove-cds report [--since DATE] [--until DATE] [--csv FILE] [--png FILE]`; retention
is `legmove-cds prune` (rows older than RETENTION_DAYS).

Definitions (also in the README, section Governance):
- patient-views: answered patient-view hook calls in the period (all rules share it);
- cards issued / would have fired / suppressed: cards made in the period, by what happened;
- accepted / overridden: issued cards of the period with at least one such feedback;
- acceptance rate: accepted / (accepted + overridden), of the cards that got feedback;
- cards per 100 patient-views: cards issued * 100 / patient-views.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import create_engine, distinct, func, select

from cds_service.store.feedback import card_feedback
from cds_service.store.governance import card_event, hook_call, prune_rows

COLUMNS = [
    "rule",
    "version",
    "patient_views",
    "cards_issued",
    "would_have_fired",
    "suppressed",
    "accepted",
    "overridden",
    "acceptance_rate",
    "override_reasons",
    "cards_per_100_patient_views",
]


@dataclass
class RuleRow:
    rule: str
    version: int
    patient_views: int = 0
    cards_issued: int = 0
    would_have_fired: int = 0
    suppressed: int = 0
    accepted: int = 0
    overridden: int = 0
    override_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def acceptance_rate(self) -> float | None:
        answered = self.accepted + self.overridden
        return round(self.accepted / answered, 3) if answered else None

    @property
    def cards_per_100_patient_views(self) -> float | None:
        return round(self.cards_issued * 100 / self.patient_views, 2) if self.patient_views else None

    def values(self) -> list:
        reasons = "; ".join(
            f"{code} x{n}" for code, n in sorted(self.override_reasons.items(), key=lambda i: (-i[1], i[0]))
        )
        return [
            self.rule,
            self.version,
            self.patient_views,
            self.cards_issued,
            self.would_have_fired,
            self.suppressed,
            self.accepted,
            self.overridden,
            "" if self.acceptance_rate is None else self.acceptance_rate,
            reasons,
            "" if self.cards_per_100_patient_views is None else self.cards_per_100_patient_views,
        ]


def _bounds(since: date | None, until: date | None) -> tuple[datetime | None, datetime | None]:
    """[since 00:00 UTC, the day after until 00:00 UTC): both days included."""
    start = datetime.combine(since, time(), UTC) if since else None
    end = datetime.combine(until + timedelta(days=1), time(), UTC) if until else None
    return start, end


def _within(column, start, end) -> list:
    return ([column >= start] if start else []) + ([column < end] if end else [])


def build(engine, since: date | None = None, until: date | None = None) -> list[RuleRow]:
    start, end = _bounds(since, until)
    rows: dict[tuple[str, int], RuleRow] = {}

    def row(rule: str, version: int) -> RuleRow:
        return rows.setdefault((rule, version), RuleRow(rule, version))

    in_period = _within(card_event.c.created_at, start, end)
    with engine.connect() as conn:
        views = conn.execute(
            select(func.count())
            .select_from(hook_call)
            .where(hook_call.c.hook == "patient-view", *_within(hook_call.c.called_at, start, end))
        ).scalar_one()
        for rule, version, kind, count in conn.execute(
            select(card_event.c.rule_id, card_event.c.rule_version, card_event.c.kind, func.count())
            .where(*in_period)
            .group_by(card_event.c.rule_id, card_event.c.rule_version, card_event.c.kind)
        ):
            attribute = {"issued": "cards_issued", "silent": "would_have_fired", "suppressed": "suppressed"}[kind]
            setattr(row(rule, version), attribute, count)
        answered = (
            select(
                card_event.c.rule_id,
                card_event.c.rule_version,
                card_feedback.c.outcome,
                func.count(distinct(card_feedback.c.card_uuid)),
            )
            .join(card_feedback, card_feedback.c.card_uuid == card_event.c.card_uuid)
            .where(card_event.c.kind == "issued", *in_period)
            .group_by(card_event.c.rule_id, card_event.c.rule_version, card_feedback.c.outcome)
        )
        for rule, version, outcome, count in conn.execute(answered):
            setattr(row(rule, version), outcome, count)
        reasons = (
            select(
                card_event.c.rule_id,
                card_event.c.rule_version,
                card_feedback.c.reason_code,
                func.count(distinct(card_feedback.c.card_uuid)),
            )
            .join(card_feedback, card_feedback.c.card_uuid == card_event.c.card_uuid)
            .where(card_event.c.kind == "issued", card_feedback.c.outcome == "overridden", *in_period)
            .group_by(card_event.c.rule_id, card_event.c.rule_version, card_feedback.c.reason_code)
        )
        for rule, version, code, count in conn.execute(reasons):
            row(rule, version).override_reasons[code or "(no reason given)"] = count
    for item in rows.values():
        item.patient_views = views
    return sorted(rows.values(), key=lambda r: (_natural(r.rule), r.version))


def _natural(rule_id: str) -> tuple:
    digits = "".join(ch for ch in rule_id if ch.isdigit())
    return (rule_id.rstrip("0123456789"), int(digits) if digits else 0, rule_id)


def text_table(rows: list[RuleRow], since: date | None, until: date | None) -> str:
    period = f"{since or 'start'} .. {until or 'now'}"
    if not rows:
        return f"Governance report {period}: no cards recorded.\n"
    headers: list[object] = [
        "rule",
        "ver",
        "views",
        "issued",
        "silent",
        "suppr.",
        "acc.",
        "overr.",
        "acc.rate",
        "/100 views",
        "override reasons",
    ]
    table: list[list[object]] = [
        [
            r.rule,
            r.version,
            r.patient_views,
            r.cards_issued,
            r.would_have_fired,
            r.suppressed,
            r.accepted,
            r.overridden,
            "-" if r.acceptance_rate is None else f"{r.acceptance_rate:.0%}",
            "-" if r.cards_per_100_patient_views is None else f"{r.cards_per_100_patient_views:g}",
            r.values()[9] or "-",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *table, strict=True)]
    lines = [f"Governance report {period} (patient-views: {rows[0].patient_views})", ""]
    for line in [headers, *table]:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


def write_csv(rows: list[RuleRow], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(r.values() for r in rows)


def write_png(rows: list[RuleRow], path: str, title: str) -> None:
    """Grouped bars per rule and version: issued, silent, suppressed, accepted, overridden."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the PNG chart needs matplotlib: pip install 'legmove-cds[report]'") from None
    matplotlib.use("Agg")  # no display: files only
    from matplotlib import pyplot
    from matplotlib.ticker import MaxNLocator

    series = [
        ("issued", "cards_issued"),
        ("would have fired", "would_have_fired"),
        ("suppressed", "suppressed"),
        ("accepted", "accepted"),
        ("overridden", "overridden"),
    ]
    labels = [f"{r.rule} v{r.version}" for r in rows]
    figure, axes = pyplot.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.5), dpi=100)
    width = 0.8 / len(series)
    for i, (name, attribute) in enumerate(series):
        axes.bar([x + i * width for x in range(len(rows))], [getattr(r, attribute) for r in rows], width, label=name)
    axes.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))], labels)
    axes.set_ylabel("cards")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title)
    axes.legend(fontsize="small")
    for x, r in enumerate(rows):
        if r.acceptance_rate is not None:
            axes.annotate(
                f"{r.acceptance_rate:.0%} accepted",
                (x + 0.4 - width / 2, 0),
                textcoords="offset points",
                xytext=(0, -28),
                ha="center",
                fontsize="x-small",
            )
    figure.tight_layout()
    figure.savefig(path, format="png")
    pyplot.close(figure)


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise SystemExit(f"--{name} must be a date like 2026-11-01, got {value!r}") from None


def command(args) -> int:
    """`legmove-cds report` and `legmove-cds prune`, on the store the service is configured with."""
    from sqlalchemy.exc import SQLAlchemyError

    from cds_service.config import settings
    from cds_service.store.migrations import SchemaMismatch, require_current

    config = settings()
    url = config["FEEDBACK_STORE"]
    if not url:
        print("the feedback store is off (FEEDBACK_STORE is null): nothing recorded", file=sys.stderr)
        return 1
    try:
        require_current(url)
    except SchemaMismatch as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"the feedback store cannot be reached: {type(exc).__name__}", file=sys.stderr)
        return 1
    engine = create_engine(url)
    try:
        if args.command == "prune":
            removed = prune_rows(engine, datetime.now(UTC), config["RETENTION_DAYS"])
            print(
                f"pruned rows older than {config['RETENTION_DAYS']} days: "
                + ", ".join(f"{table} {count}" for table, count in removed.items())
            )
            return 0
        since, until = _day(args.since, "since"), _day(args.until, "until")
        rows = build(engine, since, until)
        print(text_table(rows, since, until), end="")
        if args.csv:
            write_csv(rows, args.csv)
        if args.png:
            write_png(rows, args.png, f"legmove-cds cards per rule, {since or 'start'} to {until or 'now'}")
        return 0
    finally:
        engine.dispose()
