"""patient_feedback: the suppression lookup starts from a patient's feedback, not from their chart openings.

Suppression asks "did this patient's clinicians answer this rule's card, at this rule version and
on this evidence, recently?". Until now it answered from `card_event` (index on patient hash and
evidence fingerprint) joined to `card_feedback`: every opening of a chart adds `card_event` rows
with the same hash and fingerprint, so the lookup of a chart opened 3,000 times read thousands of
rows to find, usually, no feedback at all.

Why a table rather than an index: `card_feedback` has no patient hash, fingerprint or rule
version (they are on the card's `card_event` row), so no index on the existing tables lets the
query start from feedback. `patient_feedback` holds one row per feedback row on an issued card,
with what the decision reads (patient hash, rule, rule version, evidence fingerprint, hook, draft
orders, outcome, when the feedback arrived) and the card's issue time (so retention can remove
the row exactly when the join it stands for would lose one side). Storing feedback writes it in
the same transaction as the `card_feedback` row; feedback is rare, so it stays small.

The upgrade backfills it from existing `card_feedback` x issued `card_event` rows, so feedback
stored before the upgrade keeps suppressing after it.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patient_feedback",
        sa.Column("patient_hash", sa.String(64), nullable=False),
        sa.Column("rule_id", sa.String(32), nullable=False),
        sa.Column("rule_version", sa.Integer, nullable=False),
        sa.Column("evidence_fingerprint", sa.String(64), nullable=False),
        sa.Column("hook", sa.String(32), nullable=False),
        sa.Column("draft_refs", sa.Text, nullable=False),
        sa.Column("card_uuid", sa.String(36), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    # the lookup: one patient's feedback since the start of the longest window, newest first
    op.create_index("patient_feedback_lookup", "patient_feedback", ["patient_hash", "received_at"])
    op.execute(
        "INSERT INTO patient_feedback (patient_hash, rule_id, rule_version, evidence_fingerprint, hook,"
        " draft_refs, card_uuid, issued_at, outcome, received_at)"
        " SELECT e.patient_hash, e.rule_id, e.rule_version, e.evidence_fingerprint, e.hook,"
        " e.draft_refs, e.card_uuid, e.created_at, f.outcome, f.received_at"
        " FROM card_feedback f JOIN card_event e ON e.card_uuid = f.card_uuid"
        " WHERE e.kind = 'issued'"
    )


def downgrade() -> None:
    op.drop_table("patient_feedback")
