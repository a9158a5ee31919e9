"""The night's covering index also holds what the night compares with each produced finding (severity
and queue, with the rule version it already held), so its read of every finding on its dates stays
served from the index alone (see migration 0002).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BEFORE = ["service_date", "finding_id", "status", "rule_version", "present"]
AFTER = [*BEFORE, "severity", "queue"]


def upgrade() -> None:
    op.drop_index("ix_worklog_finding_date_state", table_name="worklog_finding")
    op.create_index("ix_worklog_finding_date_state", "worklog_finding", AFTER)


def downgrade() -> None:
    op.drop_index("ix_worklog_finding_date_state", table_name="worklog_finding")
    op.create_index("ix_worklog_finding_date_state", "worklog_finding", BEFORE)
