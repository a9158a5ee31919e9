"""Shared CLI helpers: the console, usage errors, the night date."""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=False)
err_console = Console(stderr=True)

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
EXIT_BUSY = 3  # another run holds --out (b12pipeline/runguard.py)
EXIT_ENVIRONMENT = 4  # the machine failed the run: --out not writable, disk full, a landing file vanished
EXIT_SOURCE = 5  # a pull source could not be reached (after its retries)


def usage_error(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)  # one line, however narrow
    return typer.Exit(EXIT_USAGE)


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

    from b12pipeline.config import ConfigError, load_site_config
    from b12pipeline.engine.rulefile import RuleFileError, load_ruleset

    if rules is not None and not rules.is_dir():
        raise usage_error(escape(f"--rules {rules} is not a folder"))
    try:
        ruleset = load_ruleset(rules)
        load_site_config(ruleset.directory / "site.yaml")
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
