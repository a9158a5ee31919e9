"""The worklog's tables (SQLAlchemy Core), the statuses and the interfaces a change comes through.

The schema itself is created and changed only by the Alembic migrations in `migrations/`; these
Table objects describe the head revision for queries (and for Alembic's autogenerate).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Lifecycle statuses the night sets: `new` the night a finding first appears (it becomes `open` the
# next night), `resolved` when a re-evaluation no longer produces it, `reopened` when it comes back.
NIGHT_STATUSES = ("new", "open", "resolved", "reopened")
# What a person may set.
PERSON_STATUSES = ("open", "in_progress", "fixed", "dismissed", "deferred")
STATUSES = ("new", "open", "reopened", "in_progress", "deferred", "fixed", "dismissed", "resolved")
OPEN_STATUSES = ("new", "open", "reopened", "in_progress", "deferred")
CLOSED_STATUSES = ("fixed", "dismissed", "resolved")
OPEN_WORK = ("new", "open", "reopened", "in_progress")  # plus deferred whose date has come
INTERFACES = ("cli", "excel", "web", "night", "deploy")
# Fields a person edits; each change is one audit row.
EDITABLE_FIELDS = ("status", "owner", "reason", "comment", "deferred_until")

finding = Table(
    "worklog_finding",
    metadata,
    Column("finding_id", String(64), primary_key=True),
    # What the finding is about (copied from the queue so closed findings stay listable).
    Column("queue", String(32), nullable=False, index=True),
    Column("rule_id", String(32), nullable=False, index=True),
    Column("rule_version", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("service_date", Date, nullable=False),
    # What people decide.
    Column("status", String(16), nullable=False, index=True),
    Column("owner", String(128)),
    Column("reason", String(64)),
    Column("comment", Text),  # may hold PHI: never logged, never in a report
    Column("deferred_until", Date),
    # Lifecycle facts.
    Column("first_seen_night", Date, nullable=False),
    Column("first_seen_run", String(80), nullable=False),
    Column("present", Boolean, nullable=False),  # produced by the latest evaluation of its date
    Column("closed_on", Date),  # the day it reached fixed/dismissed/resolved (for days to close)
    Column("revision", Integer, nullable=False),  # +1 on every change: an export's conflict check
)
# What a night reads for every finding of its dates, served from the index alone (migrations 0002, 0003).
Index(
    "ix_worklog_finding_date_state",
    finding.c.service_date,
    finding.c.finding_id,
    finding.c.status,
    finding.c.rule_version,
    finding.c.present,
    finding.c.severity,
    finding.c.queue,
)

audit = Table(
    "worklog_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("finding_id", String(64), nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("interface", String(16), nullable=False),
    Column("field", String(32), nullable=False),
    Column("before", Text),
    Column("after", Text),
    Column("cause", String(200)),  # run id, deployment, or why the night changed it
)

night = Table(
    "worklog_night",
    metadata,
    Column("run_id", String(80), primary_key=True),
    Column("night", Date, nullable=False, index=True),
    Column("interface", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("new", Integer, nullable=False),
    Column("reopened", Integer, nullable=False),
    Column("resolved", Integer, nullable=False),
    Column("returned", Integer, nullable=False),  # deferred findings due again
)
