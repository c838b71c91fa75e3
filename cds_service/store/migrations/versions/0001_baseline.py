"""Baseline: issued_card and card_feedback as `metadata.create_all` made them before migrations.

On a database that already has them (made by an earlier build), nothing is created: the upgrade
only records this revision.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "issued_card" not in existing:
        op.create_table(
            "issued_card",
            sa.Column("card_uuid", sa.String(36), primary_key=True),
            sa.Column("rule_id", sa.String(32), nullable=False),
            sa.Column("service_id", sa.String(64), nullable=False),
            sa.Column("hook", sa.String(32), nullable=False),
            sa.Column("suggestion_uuids", sa.Text, nullable=False),
            sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        )
    if "card_feedback" not in existing:
        op.create_table(
            "card_feedback",
            sa.Column("card_uuid", sa.String(36), nullable=False),
            sa.Column("rule_id", sa.String(32), nullable=False),
            sa.Column("outcome", sa.String(16), nullable=False),
            sa.Column("accepted_suggestions", sa.Text, nullable=False),
            sa.Column("reason_system", sa.String(255)),
            sa.Column("reason_code", sa.String(64)),
            sa.Column("user_comment", sa.Text),
            sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
            sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
            sa.UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="one_report_per_outcome"),
        )


def downgrade() -> None:
    op.drop_table("card_feedback")
    op.drop_table("issued_card")
