"""`b12pipeline queue list|show|export`: the work queues as coders use them.

These commands print and export patient identifiers on purpose (a coder works a finding by patient
and encounter). They write no log lines and nothing under <out>/runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from b12pipeline.cli.common import EXIT_OK, console, parse_date, usage_error

SEVERITY_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}
SHOW_COLUMNS = (
    "service_date",
    "severity",
    "rule_id",
    "patient_id",
    "encounter_id",
    "admin_id",
    "message",
    "expected",
    "actual",
)


def _queues_root(out: Path) -> Path:
    from b12pipeline.paths import OutputLayout

    root = OutputLayout(out).queues
    if not root.is_dir():
        raise usage_error(f"no work queues under {out} (expected {root}); run `b12pipeline nightly` first")
    return root


def _queue_name(queue: str) -> str:
    from b12pipeline.engine.rulefile import QUEUES

    if queue not in QUEUES:
        raise usage_error(f"unknown queue {queue!r}; queues are {', '.join(QUEUES)}")
    return queue


def register(app: typer.Typer) -> None:
    queue_app = typer.Typer(no_args_is_help=True, help="List, show and export the work queues.")
    app.add_typer(queue_app, name="queue")
    out_option = typer.Option(Path("var"), "--out", "-o", help="Output root the nightly run writes to.")

    @queue_app.command("list")
    def list_queues(
        out: Path = out_option,
        queue: Optional[str] = typer.Option(None, help="Only this queue."),
        nights: int = typer.Option(14, help="How many most recent dates of service to show (0 = all)."),
    ) -> None:
        """Findings per queue and date of service, by severity and rule."""
        from b12pipeline.engine.rulefile import SEVERITIES
        from b12pipeline.export import night_summary

        summary = night_summary(_queues_root(out), _queue_name(queue) if queue else None)
        if nights > 0:
            recent = summary["service_date"].unique().sort(descending=True).head(nights)
            summary = summary.filter(summary["service_date"].is_in(recent.implode()))
        table = Table(title=f"Work queues in {out}")
        for col in ("date of service", "queue", "findings", *SEVERITIES, "rules"):
            table.add_column(
                col,
                justify="right" if col in ("findings", *SEVERITIES) else "left",
                no_wrap=col in ("date of service", "queue"),
                min_width=12 if col == "rules" else None,
            )
        for r in summary.iter_rows(named=True):
            table.add_row(
                r["service_date"].isoformat(),
                r["queue"],
                f"{r['findings']:,}",
                *[f"[{SEVERITY_STYLE[s]}]{r[s]:,}" if r[s] else "0" for s in SEVERITIES],
                r["rules"].replace(", ", "\n"),
            )
        if summary.height == 0:
            console.print(f"no findings in {out / 'queues'}")
        else:
            console.print(table)

    @queue_app.command("show")
    def show(
        queue: str = typer.Argument(..., help="coding, medical_necessity or documentation."),
        out: Path = out_option,
        date: Optional[str] = typer.Option(None, "--date", "-d", help="Only this date of service (YYYY-MM-DD)."),
        rule: Optional[str] = typer.Option(None, "--rule", "-r", help="Only this rule, e.g. UNITS-001."),
        limit: int = typer.Option(200, help="Show at most this many findings (0 = all)."),
    ) -> None:
        """The findings of one queue as a table (patient identifiers included: this is a coder's view)."""
        from b12pipeline.export import select_findings

        found = select_findings(_queues_root(out), _queue_name(queue), parse_date(date, "--date"), rule)
        if found.height == 0:
            console.print(
                f"no findings in queue {queue}" + (f" on {date}" if date else "") + (f" for {rule}" if rule else "")
            )
            raise typer.Exit(EXIT_OK)
        shown = found.head(limit) if limit > 0 else found
        table = Table(title=f"Queue {queue}: {found.height:,} finding(s)", show_lines=True)
        table.add_column("date", no_wrap=True)
        table.add_column("rule", no_wrap=True)
        table.add_column("patient / encounter / admin", no_wrap=True)
        table.add_column("problem", ratio=3)
        table.add_column("expected", ratio=1)
        table.add_column("actual", ratio=1)
        for r in shown.select(SHOW_COLUMNS).iter_rows(named=True):
            style = SEVERITY_STYLE.get(r["severity"], "white")
            table.add_row(
                r["service_date"].isoformat(),
                f"{r['rule_id']}\n[{style}]{r['severity']}",
                # identifiers, messages and values come from extracts: text, never Rich markup
                escape("\n".join(str(r[c] or "") for c in ("patient_id", "encounter_id", "admin_id"))),
                escape(r["message"] or ""),
                escape(r["expected"] or ""),
                escape(r["actual"] or ""),
            )
        console.print(table)
        if shown.height < found.height:
            console.print(f"showing {shown.height:,} of {found.height:,}; use --limit 0 or `queue export`")

    @queue_app.command("export")
    def export(
        queue: str = typer.Argument(..., help="coding, medical_necessity or documentation."),
        to: Path = typer.Option(..., "--to", help="File to write (e.g. coding.xlsx)."),
        fmt: Optional[str] = typer.Option(None, "--format", "-f", help="csv or xlsx; default from --to's suffix."),
        out: Path = out_option,
        date: Optional[str] = typer.Option(None, "--date", "-d", help="Only this date of service (YYYY-MM-DD)."),
        rule: Optional[str] = typer.Option(None, "--rule", "-r", help="Only this rule, e.g. UNITS-001."),
    ) -> None:
        """Write one queue to CSV or Excel with readable column names (contains patient identifiers)."""
        from b12pipeline.export import export_csv, export_xlsx, select_findings

        kind = (fmt or to.suffix.lstrip(".")).lower()
        if kind not in ("csv", "xlsx"):
            raise usage_error(f"--format must be csv or xlsx (got {kind or 'nothing'})")
        found = select_findings(_queues_root(out), _queue_name(queue), parse_date(date, "--date"), rule)
        rows = (export_xlsx if kind == "xlsx" else export_csv)(found, to)
        console.print(f"wrote {rows:,} finding(s) of queue {queue} to {to}")
        console.print("[yellow]this file contains patient identifiers: keep it where PHI is allowed[/]")
