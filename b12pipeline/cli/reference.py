"""`b12pipeline reference import KIND FILE --rules DIR`: load a CMS quarterly file as a versioned table.

Exit codes: 0 imported; 1 the file was refused (unexpected layout, bad rows: one line naming the file
and the column); 2 usage error (unknown kind, missing file or rules folder, malformed --quarter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from b12pipeline.cli.common import EXIT_REJECTED, console, err_console, usage_error

reference_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Reference tables (CMS quarterly files).")


@reference_app.command("import")
def import_table(
    kind: str = typer.Argument(..., help="hcpcs | asp-crosswalk | noc-crosswalk | mue"),
    file: Path = typer.Argument(..., help="The CMS file as downloaded (CSV)."),
    rules: Optional[Path] = typer.Option(None, "--rules", help="Rules folder (default: the project's rules/)."),
    quarter: Optional[str] = typer.Option(
        None, "--quarter", help="Source quarter YYYYQn (default: from the file name)."
    ),
) -> None:
    """Validate a CMS file (header, encoding, rows) and write rules/reference/cms/<table>.csv with its version."""
    from b12pipeline.cms import LAYOUTS, CmsFileError, import_cms_file
    from b12pipeline.paths import rules_dir

    if kind not in LAYOUTS:
        raise usage_error(f"unknown kind {kind!r}; one of {', '.join(LAYOUTS)}")
    if not file.is_file():
        raise usage_error(escape(f"{file} is not a file"))
    folder = rules or rules_dir()
    if not folder.is_dir():
        raise usage_error(escape(f"--rules {folder} is not a folder"))
    try:
        written = import_cms_file(kind, file, folder, quarter)
    except CmsFileError as exc:
        if "quarter" in str(exc) and "YYYYQn" in str(exc):
            raise usage_error(escape(str(exc))) from None
        err_console.print(f"[bold red]refused:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_REJECTED) from None
    for meta in written:
        console.print(
            f"{meta['table']}: {meta['rows']} row(s) from {escape(meta['source_file'])} "
            f"({meta['encoding']}, {meta['preamble_lines']} preamble line(s)), version {meta['version']}"
        )
    console.print("the ruleset_version changes with the table: re-run history if findings should follow it")


def register(app: typer.Typer) -> None:
    app.add_typer(reference_app, name="reference")
