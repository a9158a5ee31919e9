"""What every CLI command shares: the console, usage errors, the night date."""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from pathlib import Path
from typing import overload

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=False)
err_console = Console(stderr=True)

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
EXIT_BUSY = 3  # another run holds --out (b12pipeline/runguard.py)
EXIT_ENVIRONMENT = 4  # the machine failed the run: --out not writable, disk full, a landing file vanished
EXIT_SOURCE = 5  # a pull source could not be reached (after its retries)


def environment_problem(exc: BaseException) -> str | None:
    """One line for a failure of the machine rather than of the data (None if it is not one):
    an OSError (read-only or full disk, a file-size limit, a landing file that vanished), a
    Polars error wrapping one ("... (os error 28)"), or the worklog's database failing, out of
    reach or refusing the update. Names the path (or the server) and the system's reason only."""
    import errno
    import os
    import re

    if isinstance(exc, OSError) and exc.errno:
        where = f"{exc.filename}: " if exc.filename else ""
        what = os.strerror(exc.errno).lower()
        if exc.errno == errno.ENOENT:
            what = "no longer there (another run sharing the landing folder, or a file moved away during the run)"
        return f"{where}{what}"
    code = re.search(r"\(os error (\d+)\)", str(exc)) if type(exc).__module__.startswith("polars") else None
    if code:
        return f"writing the output failed: {os.strerror(int(code.group(1))).lower()}"
    if type(exc).__module__.startswith("sqlalchemy") and type(exc).__name__ in ("OperationalError", "InterfaceError"):
        # The worklog's database server is down or unreachable (the queues and history are written
        # by then). The driver's first line names the server, never a value (worklog/store.py).
        why = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0]
        return (
            f"the worklog database failed ({why}); the findings are in the queues: run the night again once it is back"
        )
    orig = getattr(exc, "orig", None)
    if type(exc).__module__.startswith("sqlalchemy") and isinstance(orig, Exception):
        # The database refused the update (a constraint, a trigger, a permission): its kind, the
        # database's own code and the first line of its message, which names the constraint or
        # the table (worklog/store.py drops the lines with values and the text of a refused value).
        code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
        kind = f"{type(exc).__name__}, {code}" if code else type(exc).__name__
        why = str(orig).splitlines()[0] if str(orig) else ""
        return (
            f"the worklog database refused the night's changes ({kind}{': ' + why if why else ''}); the findings "
            "are in the queues: run the night again once the database accepts them"
        )
    return None


@contextmanager
def environment_failures():
    """An environment failure is one line and EXIT_ENVIRONMENT, not a traceback with exit 1
    (which means a file was rejected). Anything else propagates unchanged."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        line = environment_problem(exc)
        if line is None:
            raise
        err_console.print(f"[bold red]environment:[/] {escape(line)}", soft_wrap=True)
        raise typer.Exit(EXIT_ENVIRONMENT) from None


# Below every handler's level (the lowest a handler can have is NOTSET, 0): no handler emits it.
_DROPPED = -1


@contextmanager
def no_console_tracebacks(*expected: type[BaseException], summarised: tuple[str, ...] = ()):
    """Prefect logs a failed task's traceback before the CLI can say what failed in one line: while
    the command runs, Prefect's records carry their line without the traceback (the exception is
    named in the line). Records of an `expected` exception, one the command reports itself in one
    line, are dropped whole (those carrying it, and those naming it, like a run's final state), so the
    failure is said once; so are records of the `summarised` loggers, whose lines the command's
    summary prints (they reach only the console: Prefect sends its own loggers' records to its API).
    Done where records are made, not on handlers: Prefect may replace its handlers while a flow
    starts, and a filter on the old ones would be lost. A flow's line marked SAID_IN_SUMMARY is
    still sent to Prefect's API: only the console (the root logger's handlers) drops it, through a
    filter put on whatever console handlers there are as each record is made."""
    import logging

    from b12pipeline.progress import SAID_IN_SUMMARY

    make = logging.getLogRecordFactory()
    names = tuple(t.__name__ for t in expected)
    (marker,) = SAID_IN_SUMMARY
    root = logging.getLogger()

    def not_said_in_summary(record: logging.LogRecord) -> bool:
        return not getattr(record, marker, False)

    def named(record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the handler's to report, not the logging call's
            message = str(record.msg)
        return any(name in message for name in names)

    def without_traceback(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        for handler in root.handlers:
            if not_said_in_summary not in handler.filters:
                handler.addFilter(not_said_in_summary)
        if record.name in summarised:
            record.levelno = _DROPPED
        elif record.name.startswith("prefect"):
            exc = record.exc_info[1] if record.exc_info else None
            if expected and (isinstance(exc, expected) or named(record)):
                record.levelno = _DROPPED
            record.exc_info, record.exc_text = None, None
        return record

    logging.setLogRecordFactory(without_traceback)
    try:
        yield
    finally:
        logging.setLogRecordFactory(make)
        for handler in root.handlers:
            handler.removeFilter(not_said_in_summary)


def usage_error(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)  # one line, however narrow
    return typer.Exit(EXIT_USAGE)


@overload
def parse_date(value: str, name: str) -> dt.date: ...
@overload
def parse_date(value: str | None, name: str) -> dt.date | None: ...
def parse_date(value: str | None, name: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise usage_error(f"{name} {value!r} is not a date (YYYY-MM-DD)") from None


def check_rules(rules: Path | None) -> None:
    """Load the rule files and site configuration before anything heavy starts (Prefect, GX): a
    rule file that does not load is a usage error, one line naming file, line and column."""
    from rich.markup import escape

    from b12pipeline.config import load_site_config
    from b12pipeline.engine.rulefile import RuleFileError
    from b12pipeline.engine.settings import ConfigError
    from b12pipeline.rulesets import check_conditions_compile, load_ruleset

    if rules is not None and not rules.is_dir():
        raise usage_error(escape(f"--rules {rules} is not a folder"))
    try:
        ruleset = load_ruleset(rules)
        check_conditions_compile(ruleset, load_site_config(ruleset.directory / "site.yaml"))
    except (RuleFileError, ConfigError) as exc:
        raise usage_error(escape(f"{exc} (`b12pipeline rules lint` lists every problem)")) from None


def today() -> dt.date:
    """The only wall-clock read: at the CLI boundary, for a default night date."""
    return dt.date.today()


@contextmanager
def output_guard(out: Path, wait: bool):
    """Hold --out for the whole command; a second run stops with EXIT_BUSY (or waits with --wait)."""
    from b12pipeline.runguard import OutputLocked, guard_output

    def waiting(holder: str) -> None:
        err_console.print(escape(f"waiting for {out}: in use by {holder}"))

    try:
        with guard_output(out, wait=wait, on_wait=waiting):
            yield
    except OutputLocked as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_BUSY) from None
