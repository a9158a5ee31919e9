"""Alembic environment: always run from b12pipeline.worklog.store with a connection in hand."""

from alembic import context

from b12pipeline.worklog.models import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
