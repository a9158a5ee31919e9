"""`b12pipeline backfill`: re-run history for a date range with the current rules."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from b12pipeline.cli.common import (
    EXIT_OK,
    check_rules,
    console,
    err_console,
    output_guard,
    parse_date,
    usage_error,
)
from b12pipeline.cli.feedback import feedback, quiet_option


def register(app: typer.Typer) -> None:
    @app.command()
    def backfill(
        date_from: str = typer.Option(..., "--from", help="First date of service to re-evaluate (YYYY-MM-DD)."),
        date_to: str = typer.Option(..., "--to", help="Last date of service to re-evaluate (YYYY-MM-DD)."),
        out: Path = typer.Option(Path("var"), "--out", "-o", help="Output root holding history/ and queues/."),
        rules: Optional[Path] = typer.Option(
            None,
            help="Deploy this rules folder first (the `rules deploy` gates apply) and re-evaluate with it; "
            "default: the ruleset deployed on --out.",
        ),
        chunk_days: Optional[int] = typer.Option(
            None,
            "--chunk-days",
            min=1,
            help="Dates per task (one partition of work). Default: the look-back (365 days) on the local "
            "thread pool, 7 with --workers / --dask-address.",
        ),
        dask_address: Optional[str] = typer.Option(
            None, "--dask-address", help="Run the chunks on an existing Dask cluster, tcp://HOST:PORT."
        ),
        workers: Optional[int] = typer.Option(
            None, "--workers", min=1, help="Run the chunks on a local Dask cluster of N worker processes."
        ),
        quiet: bool = quiet_option,
    ) -> None:
        """Re-evaluate the history of --from..--to with the current rules; replace those dates' queue
        partitions and write a diff report (findings new / resolved / unchanged per rule)."""
        start, end = parse_date(date_from, "--from"), parse_date(date_to, "--to")
        if end < start:
            raise usage_error(f"--to {end} is before --from {start}")
        check_rules(rules)
        if dask_address and workers:
            raise usage_error("give --dask-address or --workers, not both")
        if dask_address and not dask_address.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
            raise usage_error(f"--dask-address {dask_address!r} is not a scheduler address like tcp://HOST:8786")
        if not (out / "history").is_dir():
            raise usage_error(f"{out / 'history'} does not exist: nothing has been processed into {out} yet")
        from b12pipeline.cli.prefect_server import ServerStart, flow_run_settings
        from b12pipeline.imports import imports_kept_for_the_run

        with feedback(f"backfill {start}..{end}", quiet) as shown:
            shown.step("starting Prefect")
            with imports_kept_for_the_run():
                server = ServerStart()
            server.wait()  # longer start-up timeout, one retry, one clear line if it cannot start
            if server.temporary:
                shown.step("Prefect's temporary server is up")
            with flow_run_settings():  # entered once the server's URL is set: it copies the settings
                manifest = _backfill(start, end, out, rules, chunk_days, dask_address, workers)
            shown.step("done")
        print_diff(manifest, out)
        raise typer.Exit(EXIT_OK)


def _backfill(start, end, out: Path, rules: Optional[Path], chunk_days, dask_address, workers) -> dict:
    from b12pipeline.cli.rules import deploy_or_exit
    from b12pipeline.deployments import RulesetError
    from b12pipeline.engine.rulefile import RuleFileError
    from flows.backfill import run_backfill

    if rules is not None:  # a new rules folder is deployed, through the deploy gates
        return deploy_or_exit(rules, out, start, end, chunk_days=chunk_days, dask_address=dask_address, workers=workers)
    try:
        with output_guard(out, wait=False):  # exit 3 if a night or another backfill holds --out
            return run_backfill(start, end, str(out), chunk_days=chunk_days, dask_address=dask_address, workers=workers)
    except (RuleFileError, RulesetError) as exc:
        raise usage_error(str(exc)) from None


def print_diff(manifest: dict, out: Path) -> None:
    diff = manifest["diff"]
    table = Table(title=f"Backfill {manifest['from']}..{manifest['to']} - run {manifest['run_id']}")
    for col in ("rule", "new", "resolved", "unchanged"):
        table.add_column(col, justify="left" if col == "rule" else "right")
    for rule, c in sorted(diff["per_rule"].items()):
        table.add_row(rule, f"{c['new']:,}", f"{c['resolved']:,}", f"{c['unchanged']:,}")
    t = diff["total"]
    table.add_row("[bold]total", f"[bold]{t['new']:,}", f"[bold]{t['resolved']:,}", f"[bold]{t['unchanged']:,}")
    console.print(table)
    previous = ", ".join(diff["previous_ruleset_versions"]) or "(none)"
    err_console.print(f"ruleset {previous} -> {diff['ruleset_version']}")
    console.print(f"diff:       {out / manifest['diff_report']}")
    console.print(f"findings:   {out / manifest['diff_findings']}")
    console.print(f"run record: {out / 'runs' / manifest['run_id'] / 'manifest.json'}")
    if manifest.get("change_report"):
        console.print(f"report:     {out / manifest['change_report']}")
