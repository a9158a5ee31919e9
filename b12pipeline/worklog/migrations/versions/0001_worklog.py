"""The worklog: findings with what people decided, the append-only audit log, the nights applied.

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
    op.create_table(
        "worklog_finding",
        sa.Column("finding_id", sa.String(64), primary_key=True),
        sa.Column("queue", sa.String(32), nullable=False),
        sa.Column("rule_id", sa.String(32), nullable=False),
        sa.Column("rule_version", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("service_date", sa.Date, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("reason", sa.String(64)),
        sa.Column("comment", sa.Text),
        sa.Column("deferred_until", sa.Date),
        sa.Column("first_seen_night", sa.Date, nullable=False),
        sa.Column("first_seen_run", sa.String(80), nullable=False),
        sa.Column("present", sa.Boolean, nullable=False),
        sa.Column("closed_on", sa.Date),
        sa.Column("revision", sa.Integer, nullable=False),
    )
    for col in ("queue", "rule_id", "service_date", "status"):
        op.create_index(f"ix_worklog_finding_{col}", "worklog_finding", [col])
    op.create_table(
        "worklog_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("finding_id", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("interface", sa.String(16), nullable=False),
        sa.Column("field", sa.String(32), nullable=False),
        sa.Column("before", sa.Text),
        sa.Column("after", sa.Text),
        sa.Column("cause", sa.String(200)),
    )
    op.create_index("ix_worklog_audit_finding_id", "worklog_audit", ["finding_id"])
    op.create_table(
        "worklog_night",
        sa.Column("run_id", sa.String(80), primary_key=True),
        sa.Column("night", sa.Date, nullable=False),
        sa.Column("interface", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("new", sa.Integer, nullable=False),
        sa.Column("reopened", sa.Integer, nullable=False),
        sa.Column("resolved", sa.Integer, nullable=False),
        sa.Column("returned", sa.Integer, nullable=False),
    )
    op.create_index("ix_worklog_night_night", "worklog_night", ["night"])


def downgrade() -> None:
    op.drop_table("worklog_night")
    op.drop_table("worklog_audit")
    op.drop_table("worklog_finding")
