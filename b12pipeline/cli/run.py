"""`b12pipeline run` and `b12pipeline nightly`: process one night through the Prefect flow."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from b12pipeline import progress
from b12pipeline.cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    console,
    err_console,
    output_guard,
    parse_date,
    today,
    usage_error,
)

RULES_HELP = (
    "Rules folder; must be the ruleset deployed on --out (default: the deployed one; on a new --out, "
    "the project's rules/). Change rules with `b12pipeline rules deploy`."
)
WAIT_HELP = "If another run holds --out, wait for it instead of stopping (exit code 3)."


def run_night(
    extracts: list[Path],
    out: Path,
    night_text: Optional[str],
    rules: Optional[Path],
    source: Optional[str],
    move_rejected: bool,
    engine: str = "polars",
    wait: bool = False,
) -> int:
    night = parse_date(night_text, "--night") or today()
    if rules is not None and not rules.is_dir():
        raise usage_error(f"--rules {rules} is not a folder")
    check_engine(engine)
    from b12pipeline.rulesets import RulesetError, check_requested

    try:  # read-only, before the lock and Prefect: a refused --rules leaves --out untouched
        check_requested(out, rules)  # (the flow checks again, holding the lock)
    except RulesetError as exc:
        raise usage_error(str(exc)) from None
    with output_guard(out, wait):
        return _run_night(extracts, out, night, rules, source, move_rejected, engine)


def _run_night(
    extracts: list[Path],
    out: Path,
    night,
    rules: Optional[Path],
    source: Optional[str],
    move_rejected: bool,
    engine: str,
) -> int:
    from b12pipeline.engine.rulefile import RuleFileError
    from b12pipeline.rulesets import RulesetError
    from flows.nightly import nightly_flow

    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"night {night}: starting Prefect, reading {len(extracts)} file(s)", total=len(extracts))
        stop = progress.listen(
            lambda event, data: (
                bar.update(task, advance=1, description=f"night {night}: {data['file']} {data['status']}")
                if event == "file_done"
                else None
            )
        )
        try:
            manifest = nightly_flow(
                extracts=[str(p) for p in extracts],
                out=str(out),
                night=night,
                rules_dir=str(rules) if rules else None,
                source=source,
                move_rejected=move_rejected,
                engine=engine,
            )
        except (RuleFileError, RulesetError) as exc:
            raise usage_error(str(exc)) from None
        finally:
            stop()
    print_summary(manifest, out)
    return EXIT_REJECTED if manifest["totals"]["files_rejected"] else EXIT_OK


def check_engine(engine: str) -> None:
    """Usage error for an unknown engine, or durable when durable-rules is not installed."""
    from b12pipeline.engine.durable import DurableUnavailable
    from b12pipeline.engine.evaluate import evaluator

    try:
        evaluator(engine)
    except (ValueError, DurableUnavailable) as exc:
        from rich.markup import escape  # the hint contains [durable], which is not markup

        raise usage_error(escape(f"--engine {engine}: {exc}")) from None


ENGINE_HELP = "Rule engine: polars (default) or durable (optional second engine; pip install '.[durable]')."


def print_summary(manifest: dict, out: Path) -> None:
    t = manifest["totals"]
    files = Table(title=f"Night {manifest['night']} - run {manifest['run_id']}", show_lines=False)
    files.add_column("file", no_wrap=True, overflow="fold")
    for col in ("status", "rows read", "in scope", "out of scope", "quarantined"):
        files.add_column(col, justify="left" if col == "status" else "right")
    for i in manifest["inputs"]:
        status = "[green]processed" if i["status"] == "processed" else "[red]rejected"
        files.add_row(
            i["file"],
            status,
            f"{i['rows_read']:,}",
            f"{i['in_scope']:,}",
            f"{i['out_of_scope']:,}",
            f"{i['quarantined']:,}",
        )
    files.add_row(
        "[bold]total",
        "",
        f"[bold]{t['rows_read']:,}",
        f"[bold]{t['in_scope']:,}",
        f"[bold]{t['out_of_scope']:,}",
        f"[bold]{t['quarantined']:,}",
    )
    console.print(files)
    queues = Table(title="Findings on the dates evaluated")
    queues.add_column("queue")
    queues.add_column("findings", justify="right")
    for q, n in manifest["findings"]["per_queue"].items():
        queues.add_row(q, f"{n:,}")
    console.print(queues)
    for i in manifest["inputs"]:
        if i["status"] == "rejected":
            err_console.print(f"[red]rejected[/] {i['error']}  -> {out / 'rejected'}")
    console.print(f"queues:     {out / 'queues'}")
    console.print(f"quarantine: {out / 'quarantine'}")
    console.print(f"run record: {out / 'runs' / manifest['run_id'] / 'manifest.json'}")
    if "run_report" in manifest:
        console.print(f"report:     {out / manifest['run_report']}")


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        extract: List[Path] = typer.Option(..., "--extract", "-e", help="An extract file; repeat for several."),
        out: Path = typer.Option(Path("var"), "--out", "-o", help="Output root (queues, quarantine, runs, ...)."),
        night: Optional[str] = typer.Option(None, help="Date of the night (YYYY-MM-DD); default today."),
        rules: Optional[Path] = typer.Option(None, help=RULES_HELP),
        source: Optional[str] = typer.Option(
            None,
            help="Source format (csv, parquet, clarity, fhir, or a schemas/sources mapping); "
            "default from the extension and header.",
        ),
        engine: str = typer.Option("polars", help=ENGINE_HELP),
        wait: bool = typer.Option(False, "--wait", help=WAIT_HELP),
    ) -> None:
        """Process the given extract files as one night."""
        missing = [str(p) for p in extract if not p.is_file()]
        if missing:
            raise usage_error(f"no such file: {', '.join(missing)}")
        raise typer.Exit(run_night(extract, out, night, rules, source, move_rejected=False, engine=engine, wait=wait))

    @app.command()
    def nightly(
        landing: Path = typer.Option(..., help="Landing folder the nightly extracts arrive in."),
        out: Path = typer.Option(Path("var"), "--out", "-o", help="Output root."),
        night: Optional[str] = typer.Option(None, help="Date of the night (YYYY-MM-DD); default today."),
        rules: Optional[Path] = typer.Option(None, help=RULES_HELP),
        source: Optional[str] = typer.Option(None, help="Source format for every file; default per extension."),
        engine: str = typer.Option("polars", help=ENGINE_HELP),
        wait: bool = typer.Option(False, "--wait", help=WAIT_HELP),
    ) -> None:
        """Process the files in LANDING that were not processed before (by checksum)."""
        if not landing.is_dir():
            raise usage_error(f"--landing {landing} is not a folder")
        with output_guard(out, wait):  # held from the archive lookup to the end of the night
            _nightly(landing, out, night, rules, source, engine)

    def _nightly(
        landing: Path, out: Path, night: Optional[str], rules: Optional[Path], source: Optional[str], engine: str
    ) -> None:
        from b12pipeline.archive import landing_extracts
        from b12pipeline.paths import OutputLayout

        candidates, new = landing_extracts(landing, OutputLayout(out).archive)
        if not new:
            console.print(f"nothing new in {landing} ({len(candidates)} file(s) already processed)")
            raise typer.Exit(EXIT_OK)
        if len(new) < len(candidates):
            console.print(f"skipping {len(candidates) - len(new)} file(s) already processed (same checksum)")
        raise typer.Exit(run_night(new, out, night, rules, source, move_rejected=True, engine=engine))
