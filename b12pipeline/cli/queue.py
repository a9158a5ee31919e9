"""`b12pipeline queue list|show|export`: the work queues as coders use them.

These commands print and export patient identifiers on purpose (a coder works a finding by patient
and encounter). They write no log lines and nothing under <out>/runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Group
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

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


# Below this many columns the findings table squeezes Problem/Expected/Actual to a few characters.
TABLE_MIN_WIDTH = 120


def findings_table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title, show_lines=True)
    table.add_column("date", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("patient / encounter / admin", no_wrap=True)
    table.add_column("problem", ratio=3, overflow="fold")
    table.add_column("expected", ratio=1, overflow="fold")
    table.add_column("actual", ratio=1, overflow="fold")
    for r in rows:
        style = SEVERITY_STYLE.get(r["severity"], "white")
        table.add_row(
            r["service_date"].isoformat(),
            f"{r['rule_id']}\n[{style}]{r['severity']}",
            "\n".join(str(r[c] or "") for c in ("patient_id", "encounter_id", "admin_id")),
            escape(r["message"] or ""),
            escape(r["expected"] or ""),
            escape(r["actual"] or ""),
        )
    return table


def finding_block(r: dict) -> Group:
    """One finding as labelled lines; long text wraps at words inside the value column."""
    style = SEVERITY_STYLE.get(r["severity"], "white")
    head = Text.assemble(
        (r["service_date"].isoformat(), "bold"), "  ", (r["rule_id"], "bold"), "  ", (r["severity"], style)
    )
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, style="dim", min_width=10)
    grid.add_column(overflow="fold")
    grid.add_row("patient", str(r["patient_id"] or ""))
    grid.add_row("encounter", str(r["encounter_id"] or ""))
    grid.add_row("admin", str(r["admin_id"] or ""))
    for label, key in (("problem", "message"), ("expected", "expected"), ("actual", "actual")):
        grid.add_row(label, Text(r[key] or ""))
    return Group(Text(""), head, Padding(grid, (0, 0, 0, 2)))


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
        # SIMPLE_HEAD (no side borders) so 80 columns hold every column and whole rule ids.
        table = Table(title=f"Work queues in {out}", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
        widest = max((len(x) for r in summary["rules"].to_list() for x in r.split(", ")), default=5)
        for col in ("date", "queue", "findings", *SEVERITIES, "rules"):
            table.add_column(
                col,
                justify="right" if col in ("findings", *SEVERITIES) else "left",
                no_wrap=True,
                min_width=widest if col == "rules" else None,
                overflow="fold",
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
        rows = list(shown.select(SHOW_COLUMNS).iter_rows(named=True))
        title = f"Queue {queue}: {found.height:,} finding(s)"
        if console.width >= TABLE_MIN_WIDTH:
            console.print(findings_table(title, rows))
        else:  # a narrow terminal: one block per finding, so no text is ever cut
            console.print(f"[bold]{title}[/]")
            for r in rows:
                console.print(finding_block(r))
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
