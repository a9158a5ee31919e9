"""Shared CLI helpers: the console, usage errors, the night date."""
from __future__ import annotations

import datetime as dt

import typer
from rich.console import Console

console = Console(stderr=False)
err_console = Console(stderr=True)

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def usage_error(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(EXIT_USAGE)


def parse_date(value: str | None, name: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise usage_error(f"{name} {value!r} is not a date (YYYY-MM-DD)") from None


def today() -> dt.date:
    """The only wall-clock read: at the CLI boundary, for a default night date."""
    return dt.date.today()
