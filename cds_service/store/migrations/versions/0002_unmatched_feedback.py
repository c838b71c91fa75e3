"""unmatched_feedback: feedback on a card uuid the store does not know is kept, not dropped.

A card the store never recorded (issued by another deployment, before a store reset, or whose
recording failed) still carries a clinician's answer; it is kept here so it can be matched or
counted later.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unmatched_feedback",
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("card_uuid", sa.String(36), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accepted_suggestions", sa.Text, nullable=False),
        sa.Column("reason_system", sa.String(255)),
        sa.Column("reason_code", sa.String(64)),
        sa.Column("user_comment", sa.Text),
        sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("service_id", "card_uuid", "outcome", "outcome_timestamp", name="one_unmatched_report"),
    )


def downgrade() -> None:
    op.drop_table("unmatched_feedback")
