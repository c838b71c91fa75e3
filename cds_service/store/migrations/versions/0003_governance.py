"""Governance: every hook call and every card made (issued, silent or suppressed), with versions.

`hook_call` counts calls per hook (rates per patient-view); `card_event` holds one row per card a
rule made in a call: issued (with its uuid, so feedback joins to it), silent (a rule in silent
mode: would have fired) or suppressed (not shown, with the reason). Patients appear only as a
keyed hash; the key is configuration, never stored here.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hook_call",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("called_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("hook", sa.String(32), nullable=False),
        sa.Column("patient_hash", sa.String(64), nullable=False),
        sa.Column("cards_issued", sa.Integer, nullable=False),
        sa.Column("silent", sa.Integer, nullable=False),
        sa.Column("suppressed", sa.Integer, nullable=False),
        sa.Column("knowledge_version", sa.String(40), nullable=False),
        sa.Column("service_version", sa.String(32), nullable=False),
    )
    op.create_index("hook_call_called_at", "hook_call", ["called_at"])
    op.create_table(
        "card_event",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),  # issued | silent | suppressed
        sa.Column("card_uuid", sa.String(36)),  # issued cards only
        sa.Column("rule_id", sa.String(32), nullable=False),
        sa.Column("rule_version", sa.Integer, nullable=False),
        sa.Column("knowledge_version", sa.String(40), nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("hook", sa.String(32), nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("patient_hash", sa.String(64), nullable=False),
        sa.Column("evidence_fingerprint", sa.String(64), nullable=False),
        sa.Column("draft_refs", sa.Text, nullable=False),  # JSON array of the draft orders the card rests on
        sa.Column("reason", sa.String(48)),  # why a card was suppressed
    )
    op.create_index("card_event_lookup", "card_event", ["patient_hash", "evidence_fingerprint"])
    op.create_index("card_event_card_uuid", "card_event", ["card_uuid"])
    op.create_index("card_event_created_at", "card_event", ["created_at"])


def downgrade() -> None:
    op.drop_table("card_event")
    op.drop_table("hook_call")
