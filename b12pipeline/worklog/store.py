"""Where the worklog lives and how it is opened: one engine per output root, migrated to head.

Default: SQLite in WAL mode at `<out>/worklog.sqlite`, created owner-only (0600; SQLite gives its
-wal/-shm files the database file's mode). `B12_WORKLOG_URL` (a SQLAlchemy URL, e.g.
`postgresql+psycopg://coders@db/b12`) points every interface at a shared server instead.

Every write goes through `write_transaction`, which serialises writers: SQLite takes its write lock
at BEGIN (BEGIN IMMEDIATE, not on the first write, so a read-then-write cannot interleave with
another writer), PostgreSQL takes a self-exclusive table lock. A night's lifecycle update and a
coder's import therefore run one after the other and both land in the audit log.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError

URL_ENV = "B12_WORKLOG_URL"
SQLITE_NAME = "worklog.sqlite"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_engines: dict[str, Engine] = {}


class WorklogError(RuntimeError):
    """The worklog cannot be opened or used; the message names the database, never a row's value."""


def worklog_url(out: Path | str) -> str:
    """B12_WORKLOG_URL when set, else the embedded SQLite file under `out`."""
    return os.environ.get(URL_ENV, "").strip() or f"sqlite:///{(Path(out) / SQLITE_NAME).resolve()}"


def describe(engine: Engine) -> str:
    """The database without its password, for messages."""
    return engine.url.render_as_string(hide_password=True)


def open_worklog(out: Path | str | None = None, url: str | None = None) -> Engine:
    """An engine on the worklog of `out` (or on `url`), its schema migrated to head. Cached per URL."""
    if url is None:
        if out is None:
            raise ValueError("open_worklog needs an output root or a URL")
        url = worklog_url(out)
    engine = _engines.get(url)
    if engine is None:
        engine = _create(url)
        upgrade(engine)
        _engines[url] = engine
    return engine


def dispose_all() -> None:
    """Close every cached engine (tests, and before a process forks)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


def _without_row_values(context) -> None:
    """PostgreSQL adds the values it refused on lines of their own ("DETAIL: Failing row contains
    (...)", "Key (finding_id)=(...) already exists"): the error keeps its first line, which names
    the constraint and the column only. A value the database could not take (DataError: 'invalid
    input syntax for type date: "..."') is quoted on that first line: its text is replaced."""
    for error in (context.original_exception, context.sqlalchemy_exception):
        if isinstance(context.sqlalchemy_exception, DataError) and error is not None:
            error.args = (REFUSED_VALUE,)
            continue
        lines = str(error.args[0]).splitlines() if error is not None and len(error.args) == 1 else []
        if len(lines) > 1:
            error.args = (lines[0],)


REFUSED_VALUE = "the database could not take a value of this statement (the value is not repeated here)"


def _create(url: str) -> Engine:
    # hide_parameters: a failed statement's text (in a traceback, Prefect's task log, a web error)
    # shows its SQL but not its values, which can be a coder's comment or a finding's ids.
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True, hide_parameters=True)
        event.listen(engine, "handle_error", _without_row_values)
        return engine
    if parsed.database in (None, "", ":memory:"):
        raise WorklogError("the worklog needs a SQLite file, not an in-memory database")
    path = Path(parsed.database)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    path.chmod(0o600)  # owner-only even when the umask is wider: comments may hold PHI
    engine = create_engine(url, connect_args={"timeout": 60, "isolation_level": None}, hide_parameters=True)
    event.listen(engine, "handle_error", _without_row_values)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # pysqlite's own transaction handling is off (isolation_level=None): take the write lock
        # at BEGIN so reads inside a write transaction see what the write will change.
        deferred = conn.get_execution_options().get("worklog_read", False)
        conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction holding the worklog's write lock; committed on success, rolled back on error."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # SHARE ROW EXCLUSIVE conflicts with itself (writers queue) but not with plain reads.
            conn.execute(text("LOCK TABLE worklog_finding IN SHARE ROW EXCLUSIVE MODE"))
        yield conn


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for reading only (SQLite: no write lock; it sees one consistent snapshot)."""
    with engine.connect().execution_options(worklog_read=True) as conn:
        yield conn


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (shipped inside the package, so any install works)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(461283)"))  # two first opens: one migrates
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
