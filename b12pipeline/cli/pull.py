"""`b12pipeline pull`: fetch the night from a configured source (SQL, SFTP, folder) and process it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from b12pipeline.cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_SOURCE,
    console,
    err_console,
    no_console_tracebacks,
    output_guard,
    parse_date,
    today,
    usage_error,
)

SOURCES_HELP = "Sources file (default: the file B12_SOURCES_FILE names); see docs/operations.md."


def checked_sources_file(source: str, sources: Optional[Path]) -> Path:
    """The sources file that names `source` (--sources, else B12_SOURCES_FILE), or a usage error."""
    from b12pipeline import pull as pulling

    sources_file = sources or pulling.default_sources_file()
    if sources_file is None:
        raise usage_error("no sources file: pass --sources FILE or set B12_SOURCES_FILE")
    try:
        configured = pulling.load_sources(sources_file)
    except pulling.SourceConfigError as exc:
        raise usage_error(escape(str(exc))) from None
    if source not in configured:
        raise usage_error(
            escape(f"--source {source}: not in {sources_file}; known: {', '.join(sorted(configured)) or 'none'}")
        )
    return Path(sources_file)


def register(app: typer.Typer) -> None:
    @app.command()
    def pull(
        source: str = typer.Option(..., "--source", "-s", help="Name of the source in the sources file."),
        out: Path = typer.Option(Path("var"), "--out", "-o", help="Output root."),
        night: Optional[str] = typer.Option(None, help="Date of the night (YYYY-MM-DD); default today."),
        sources: Optional[Path] = typer.Option(None, "--sources", help=SOURCES_HELP),
        rules: Optional[Path] = typer.Option(None, help="Rules folder (default: the project's rules/)."),
        wait: bool = typer.Option(False, "--wait", help="If another run holds --out, wait for it."),
    ) -> None:
        """Fetch the night's extract from SOURCE (kept byte for byte in the archive) and process it.

        Exit codes: 0 processed or nothing new, 1 a fetched file was rejected, 2 usage or configuration
        error, 3 another run holds --out, 5 the source could not be reached (after its retries).
        """

        night_date = parse_date(night, "--night") or today()
        if rules is not None and not rules.is_dir():
            raise usage_error(f"--rules {rules} is not a folder")
        sources_file = checked_sources_file(source, sources)
        with output_guard(out, wait):
            raise typer.Exit(_pull(source, out, night_date, Path(sources_file), rules))

    def _pull(source: str, out: Path, night, sources_file: Path, rules: Optional[Path]) -> int:
        from b12pipeline import pull as pulling
        from b12pipeline.cli.prefect_server import flow_run_settings
        from b12pipeline.cli.run import print_summary
        from b12pipeline.imports import imports_kept_for_the_run

        with imports_kept_for_the_run():  # Prefect's (GX is imported only if a file comes in)
            from flows.pull import pull_flow
        try:
            with no_console_tracebacks(pulling.SourceUnreachable, pulling.SourceConfigError), flow_run_settings():
                result = pull_flow(
                    source=source,
                    out=str(out),
                    sources_file=str(sources_file.resolve()),
                    night=night,
                    rules_dir=str(rules.resolve()) if rules else None,
                )
        except pulling.SourceUnreachable as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
            return EXIT_SOURCE
        except pulling.SourceConfigError as exc:
            raise usage_error(escape(str(exc))) from None
        if not result.get("run_id"):
            console.print(f"source {source}, night {night}: nothing new ({result.get('fetched', 0)} file(s) fetched)")
            return EXIT_OK
        manifest = json.loads((out / "runs" / result["run_id"] / "manifest.json").read_text())
        print_summary(manifest, out)
        return EXIT_REJECTED if result.get("files_rejected") else EXIT_OK
