"""A covering index for the night's read of every finding on its dates (service date first).

A night with 100k open findings read them through the service-date index plus a table lookup per
row; served from one index it reads 2.5x faster (bench/run_bench.py, worklog). It replaces the plain
service-date index, whose leading column it shares.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_worklog_finding_date_state",
        "worklog_finding",
        ["service_date", "finding_id", "status", "rule_version", "present"],
    )
    op.drop_index("ix_worklog_finding_service_date", table_name="worklog_finding")


def downgrade() -> None:
    op.create_index("ix_worklog_finding_service_date", "worklog_finding", ["service_date"])
    op.drop_index("ix_worklog_finding_date_state", table_name="worklog_finding")
