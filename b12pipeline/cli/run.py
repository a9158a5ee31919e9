"""`b12pipeline run` and `b12pipeline nightly`: process one night through the Prefect flow."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from b12pipeline.cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    check_rules,
    console,
    environment_failures,
    err_console,
    no_console_tracebacks,
    output_guard,
    parse_date,
    today,
    usage_error,
)
from b12pipeline.cli.feedback import feedback, quiet_option

RULES_HELP = (
    "Rules folder; must be the ruleset deployed on --out (default: the deployed one; on a new --out, "
    "the project's rules/). Change rules with `b12pipeline rules deploy`."
)
WAIT_HELP = "If another run holds --out, wait for it instead of stopping (exit code 3)."


def preflight(night_text: Optional[str], rules: Optional[Path], engine: str, out: Path):
    """Every check that needs no data, before the output lock, Prefect or GX: the night's date, the
    rule files (file, line and column), that --rules is the ruleset deployed on --out (read-only: a
    refused folder leaves --out untouched; the flow checks again holding the lock), the engine.
    Returns the night."""
    from b12pipeline.deployments import RulesetError, check_requested

    night = parse_date(night_text, "--night") or today()
    check_rules(rules)
    try:
        check_requested(out, rules)
    except RulesetError as exc:
        raise usage_error(str(exc)) from None
    check_engine(engine)
    return night


def run_night(
    extracts: list[Path],
    out: Path,
    night,
    rules: Optional[Path],
    source: Optional[str],
    move_rejected: bool,
    engine: str = "polars",
    wait: bool = False,
    quiet: bool = False,
) -> int:
    """`night`, `rules` and `engine` have passed preflight()."""
    with environment_failures(), output_guard(out, wait):
        return _run_night(extracts, out, night, rules, source, move_rejected, engine, quiet)


def _run_night(
    extracts: list[Path],
    out: Path,
    night: dt.date,
    rules: Optional[Path],
    source: Optional[str],
    move_rejected: bool,
    engine: str,
    quiet: bool = False,
) -> int:
    def run() -> dict:
        from flows.nightly import nightly_flow

        return nightly_flow(
            extracts=[str(p) for p in extracts],
            out=str(out),
            night=night,
            rules_dir=str(rules) if rules else None,
            source=source,
            move_rejected=move_rejected,
            engine=engine,
        )

    manifest = _with_feedback(night, f"starting Prefect for {len(extracts)} file(s)", quiet, run)
    print_summary(manifest, out)
    return EXIT_REJECTED if manifest["totals"]["files_rejected"] else EXIT_OK


def _with_feedback(night: dt.date, first_step: str, quiet: bool, run: Callable[[], dict]) -> dict:
    """Run a night's flow showing its progress steps on stderr (file names and counts only)."""
    from b12pipeline.deployments import RulesetError
    from b12pipeline.engine.rulefile import RuleFileError
    from b12pipeline.gx_process import gx_in_its_own_process

    # Validation goes to GX's process, started with the command (gx_started).
    with feedback(f"night {night}", quiet) as shown, gx_in_its_own_process():
        shown.step(first_step)
        from b12pipeline.cli.prefect_server import ServerStart, flow_run_settings, warm_up_in_background
        from b12pipeline.imports import imports_kept_for_the_run

        with imports_kept_for_the_run():
            server = ServerStart()
        warm_up_in_background()  # the ICD-10-CM list and the worklog's imports, while the night starts
        server.wait()
        if server.temporary:
            shown.step("Prefect's temporary server is up")
        try:
            # The summary prints the night's warnings (stale CMS tables) itself.
            with no_console_tracebacks(summarised=("b12pipeline.reference",)), flow_run_settings():
                result = run()
        except (RuleFileError, RulesetError) as exc:
            raise usage_error(str(exc)) from None
        shown.step("done")
    return result


def run_landing(
    landing: Path, out: Path, night: dt.date, rules: Optional[Path], source: Optional[str], engine: str, quiet: bool
) -> int:
    """The scheduled night's flow (landing_flow) run now: the same landing lookup, archive and moves.
    `night`, `rules` and `engine` have passed preflight()."""

    def run() -> dict:
        from flows.nightly import landing_flow

        return landing_flow(
            landing=str(landing),
            out=str(out),
            night=night,
            rules_dir=str(rules) if rules else None,
            source=source,
            engine=engine,
        )

    result = _with_feedback(night, "starting Prefect", quiet, run)
    if result["run_id"] is None:
        for entry in result.get("ignored", []):  # names from the landing folder: text, never markup
            console.print(f"ignored {escape(entry['file'])}: {escape(entry['reason'])}")
        console.print(
            f"nothing new in {escape(str(landing))} ({result['already_processed']} file(s) already processed)"
        )
        return EXIT_OK
    if result["already_processed"]:
        console.print(f"skipped {result['already_processed']} file(s) already processed (same checksum)")
    print_summary(result["manifest"], out)
    return EXIT_REJECTED if result["files_rejected"] else EXIT_OK


def check_engine(engine: str) -> None:
    """Usage error for an unknown engine, or durable when durable-rules is not installed."""
    from b12pipeline.engine.engines import ENGINES

    if engine == "polars":  # the default: nothing to check, and no reason to import the engine yet
        return
    if engine not in ENGINES:
        raise usage_error(f"--engine {engine}: unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    from b12pipeline.engine.durable import DurableUnavailable
    from b12pipeline.engine.engines import evaluator

    try:
        evaluator(engine)
    except (ValueError, DurableUnavailable) as exc:
        raise usage_error(escape(f"--engine {engine}: {exc}")) from None


ENGINE_HELP = "Rule engine: polars (default) or durable (optional second engine; pip install '.[durable]')."


def print_summary(manifest: dict, out: Path) -> None:
    """File names, reasons and paths come from data: escaped, so `[/]` in them is text, not markup."""
    t = manifest["totals"]
    # Borderless so 80 columns hold every heading and count whole; only a long file name folds.
    files = Table(
        title=f"Night {manifest['night']} - run {manifest['run_id']}",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )
    files.add_column("file", overflow="fold")
    for col in ("status", "read", "in scope", "out of scope", "quarantined"):
        files.add_column(col, justify="left" if col == "status" else "right", no_wrap=True)
    for i in manifest["inputs"]:
        status = {"processed": "[green]processed", "deferred": "[yellow]deferred"}.get(i["status"], "[red]rejected")
        files.add_row(
            escape(i["file"]),
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
    title = "Findings on the dates evaluated"
    queues = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, min_width=len(title))
    queues.add_column("queue")
    queues.add_column("findings", justify="right")
    for q, n in manifest["findings"]["per_queue"].items():
        queues.add_row(q, f"{n:,}")
    console.print(queues)
    for i in manifest["inputs"]:
        if i["status"] == "deferred":
            err_console.print(f"[yellow]deferred[/] {escape(i['error'])}", soft_wrap=True)
        if i["status"] == "rejected":
            kept = out / "rejected" / i.get("rejected_as", "")
            err_console.print(f"[red]rejected[/] {escape(i['error'])}  -> {escape(str(kept))}", soft_wrap=True)
    for warning in manifest.get("warnings", []):  # stale CMS tables (reference_max_age_quarters)
        err_console.print(f"[yellow]warning[/] {escape(warning)}", soft_wrap=True)
    for entry in manifest.get("ignored", []):
        console.print(f"ignored {escape(entry['file'])}: {escape(entry['reason'])}", soft_wrap=True)
    # Paths whole on one line (the terminal wraps them): copied or grepped, a path broken by a line
    # end is a different path.
    console.print(f"queues:     {escape(str(out / 'queues'))}", soft_wrap=True)
    console.print(f"quarantine: {escape(str(out / 'quarantine'))}", soft_wrap=True)
    console.print(f"run record: {escape(str(out / 'runs' / manifest['run_id'] / 'manifest.json'))}", soft_wrap=True)
    if "run_report" in manifest:
        console.print(f"report:     {escape(str(out / manifest['run_report']))}", soft_wrap=True)


def gx_started():
    """GX's process (gx_process.py), started once the command's arguments and rules have passed
    their checks (a data-free error spawns nothing: started before them, it took CPU from the
    check of the rule files and a malformed one was reported 1.64x `--help` instead of ~1.3x), so
    its import (~2 s of CPU) runs on the core this process leaves idle while it takes --out and
    starts Prefect; it ends with the command."""
    from b12pipeline.gx_process import gx_process_started

    return gx_process_started()


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        extract: List[Path] = typer.Option(
            ..., "--extract", "-e", help="An extract file (or a FHIR Bulk Data export folder); repeat for several."
        ),
        out: Path = typer.Option(Path("var"), "--out", "-o", help="Output root (queues, quarantine, runs, ...)."),
        night: Optional[str] = typer.Option(None, help="Date of the night (YYYY-MM-DD); default today."),
        rules: Optional[Path] = typer.Option(None, help=RULES_HELP),
        source: Optional[str] = typer.Option(
            None,
            help="Source format (csv, parquet, clarity, fhir, fhir-bulk, or a schemas/sources mapping); "
            "default from the extension and header (a folder or Bulk Data manifest is fhir-bulk).",
        ),
        engine: str = typer.Option("polars", help=ENGINE_HELP),
        wait: bool = typer.Option(False, "--wait", help=WAIT_HELP),
        quiet: bool = quiet_option,
    ) -> None:
        """Process the given extract files as one night."""
        missing = [str(p) for p in extract if not (p.is_file() or p.is_dir())]
        if missing:
            raise usage_error(f"no such file: {', '.join(missing)}")
        day = preflight(night, rules, engine, out)
        with gx_started():
            raise typer.Exit(run_night(extract, out, day, rules, source, False, engine, wait, quiet))

    @app.command()
    def nightly(
        landing: Path = typer.Option(..., help="Landing folder the nightly extracts arrive in."),
        out: Path = typer.Option(Path("var"), "--out", "-o", help="Output root."),
        night: Optional[str] = typer.Option(None, help="Date of the night (YYYY-MM-DD); default today."),
        rules: Optional[Path] = typer.Option(None, help=RULES_HELP),
        source: Optional[str] = typer.Option(None, help="Source format for every file; default per extension."),
        engine: str = typer.Option("polars", help=ENGINE_HELP),
        wait: bool = typer.Option(False, "--wait", help=WAIT_HELP),
        quiet: bool = quiet_option,
    ) -> None:
        """Process the files in LANDING that were not processed before (by checksum)."""
        if not landing.is_dir():
            raise usage_error(f"--landing {landing} is not a folder")
        day = preflight(night, rules, engine, out)
        with gx_started(), environment_failures(), output_guard(out, wait):  # held from the archive lookup on
            raise typer.Exit(run_landing(landing, out, day, rules, source, engine, quiet))
