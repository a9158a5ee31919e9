"""`b12pipeline queue list|show|set|history|export|import`: the work queues as coders work them.

These commands print and export patient identifiers and comments on purpose (a coder works a finding
by patient and encounter). They write no log lines and nothing under <out>/runs. What a coder decides
goes to the worklog (b12pipeline/worklog), recorded with who (the OS user, or --as) and when.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.console import Group
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from b12pipeline.cli.common import (
    EXIT_ENVIRONMENT,
    EXIT_OK,
    EXIT_REJECTED,
    console,
    err_console,
    parse_date,
    today,
    usage_error,
)
from b12pipeline.cli.feedback import feedback, quiet_option

SEVERITY_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}


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
    table.add_column("status", min_width=11)
    for r in rows:
        style = SEVERITY_STYLE.get(r["severity"], "white")
        table.add_row(
            r["service_date"].isoformat(),
            f"{r['rule_id']}\n[{style}]{r['severity']}",
            "\n".join(str(r[c] or "") for c in ("patient_id", "encounter_id", "admin_id")),
            escape(r["message"] or ""),
            escape(r["expected"] or ""),
            escape(r["actual"] or ""),
            _status_cell(r),
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
    grid.add_row("status", _status_cell(r).replace("\n", ", "))
    return Group(Text(""), head, Padding(grid, (0, 0, 0, 2)))


def _show_quarantine(out: Path, day, limit: int) -> None:
    """Quarantined rows, oldest date first, one block each: where the row came from, who it is
    about, and every reason it was held (a coder or IT fixes the source and re-sends it)."""
    import polars as pl

    from b12pipeline.paths import OutputLayout

    root = OutputLayout(out).quarantine
    paths = sorted(root.glob("*=*/*.parquet")) if root.is_dir() else []
    if day is not None:
        paths = [p for p in paths if p.parent.name == f"service_date={day.isoformat()}"]
    if not paths:
        console.print(f"no quarantined rows in {root}" + (f" on {day}" if day else ""))
        return
    frames = [pl.read_parquet(p).with_columns(pl.lit(p.parent.name).alias("_where")) for p in paths]
    rows = pl.concat(frames, how="diagonal_relaxed").sort("_where", "source_file", "source_row")
    shown = rows.head(limit) if limit > 0 else rows
    console.print(f"[bold]Quarantine in {out}: {rows.height:,} row(s)[/]")
    for r in shown.iter_rows(named=True):
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, style="dim", min_width=10)
        grid.add_column(overflow="fold")
        where = r["_where"].replace("service_date=", "date of service ").replace("extract_date=", "night ")
        grid.add_row("held on", where)
        for label, key in (("patient", "patient_id"), ("encounter", "encounter_id"), ("admin", "admin_id")):
            grid.add_row(label, str(r.get(key) or ""))
        grid.add_row("reasons", Text(r.get("failure_reasons") or ""))
        head = Text.assemble((str(r.get("source_file") or ""), "bold"), f"  row {r.get('source_row')}")
        console.print(Group(Text(""), head, Padding(grid, (0, 0, 0, 2))))
    if shown.height < rows.height:
        console.print(f"showing {shown.height:,} of {rows.height:,}; use --limit 0")


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


def _known_rule(rule: str | None, out: Path) -> str | None:
    """--rule as given, or a usage error when no rule file and no finding has that id (a typo would
    otherwise read as "no findings")."""
    if rule is None:
        return None
    from b12pipeline.engine.rulefile import RuleFileError
    from b12pipeline.queues import read_queue
    from b12pipeline.rulesets import load_ruleset

    try:
        known = {r.id for r in load_ruleset().rules}
    except RuleFileError:
        known = set()
    if rule.upper() in known or rule.upper() in set(read_queue(_queues_root(out))["rule_id"].to_list()):
        return rule
    raise usage_error(f"--rule {rule}: no such rule (`b12pipeline rules list` shows them)")


def _actor(name: str | None) -> str:
    """Who acts: --as NAME, else the OS user (recorded on every change)."""
    import getpass

    return (name or "").strip() or getpass.getuser()


def _worklog(out: Path):
    """The worklog of `out` (or B12_WORKLOG_URL); an unreachable database is one line, exit 4."""
    from sqlalchemy.exc import SQLAlchemyError

    from b12pipeline.worklog import WorklogError, open_worklog

    try:
        return open_worklog(out)
    except (SQLAlchemyError, WorklogError, OSError) as exc:
        err_console.print(f"[bold red]error:[/] cannot open the worklog of {out}: {type(exc).__name__}")
        raise typer.Exit(EXIT_ENVIRONMENT) from None


def _filters(**flags) -> dict:
    return {k: v for k, v in flags.items() if v not in (None, False, "")}


def _work(out: Path, queue: str | None, filters: dict, as_of):
    from b12pipeline.worklog.view import FilterError, filter_work, work_view

    _queues_root(out)
    view = work_view(out, _worklog(out), queue, as_of=as_of)
    try:
        return filter_work(view, filters, as_of=as_of)
    except FilterError as exc:
        raise usage_error(str(exc)) from None


def register(app: typer.Typer) -> None:
    queue_app = typer.Typer(no_args_is_help=True, help="List, show and export the work queues.")
    app.add_typer(queue_app, name="queue")
    out_option = typer.Option(
        Path("var"),
        "--out",
        "-o",
        help="Output root to read: the --out the nightly run writes to (its queues/ folder and worklog).",
    )

    @queue_app.command("list")
    def list_queues(
        out: Path = out_option,
        queue: Optional[str] = typer.Option(None, help="Only this queue."),
        nights: int = typer.Option(14, help="How many most recent dates of service to show (0 = all)."),
    ) -> None:
        """Findings per queue and date of service, by severity and rule."""
        from b12pipeline.engine.rulefile import SEVERITIES
        from b12pipeline.export import night_summary
        from b12pipeline.worklog.queries import backlog_by_queue

        summary = night_summary(_queues_root(out), _queue_name(queue) if queue else None)
        backlog = backlog_by_queue(_worklog(out), queue, as_of=today())
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
        if backlog.height:
            work = Table(title="Open work (worklog)", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
            for col in backlog.columns:
                work.add_column(col.replace("_", " "), justify="left" if col == "queue" else "right", no_wrap=True)
            for row in backlog.iter_rows():
                work.add_row(*[f"{v:,}" if isinstance(v, int) else str(v or "") for v in row])
            console.print(work)

    @queue_app.command("show")
    def show(
        queue: str = typer.Argument(
            ..., help="coding, medical_necessity or documentation; or quarantine (rows held back, with reasons)."
        ),
        out: Path = out_option,
        date: Optional[str] = typer.Option(None, "--date", "-d", help="Only this date of service (YYYY-MM-DD)."),
        rule: Optional[str] = typer.Option(None, "--rule", "-r", help="Only this rule, e.g. UNITS-001."),
        status: Optional[str] = typer.Option(
            None,
            "--status",
            "-s",
            help="new, open, reopened, in_progress, deferred, fixed, dismissed, resolved "
            "(several with |), all, or open-work (the default: what is left to do).",
        ),
        owner: Optional[str] = typer.Option(None, "--owner", help="Only findings owned by NAME."),
        severity: Optional[str] = typer.Option(None, "--severity", help="error, warning or info."),
        payer: Optional[str] = typer.Option(None, "--payer", help="Only this payer type, e.g. medicare."),
        new: bool = typer.Option(False, "--new", help="Only findings new tonight."),
        limit: int = typer.Option(200, help="Show at most this many findings (0 = all)."),
    ) -> None:
        """The findings of one queue with their status (patient identifiers included: a coder's view).
        `queue show quarantine`: the rows validation held back, with their reasons."""
        if queue == "quarantine":
            _show_quarantine(out, parse_date(date, "--date"), limit)
            raise typer.Exit(EXIT_OK)
        filters = _filters(
            date=parse_date(date, "--date"),
            rule=_known_rule(rule, out),
            status=status,
            owner=owner,
            severity=severity,
            payer=payer,
            new=new,
        )
        found = _work(out, _queue_name(queue), filters, today())
        if found.height == 0:
            console.print(f"no findings in queue {queue} matching {_describe(filters) or 'the open work'}")
            raise typer.Exit(EXIT_OK)
        shown = found.head(limit) if limit > 0 else found
        rows = list(shown.iter_rows(named=True))
        title = f"Queue {queue}: {found.height:,} finding(s)"
        if console.width >= TABLE_MIN_WIDTH:
            console.print(findings_table(title, rows))
        else:  # a narrow terminal: one block per finding, so no text is ever cut
            console.print(f"[bold]{title}[/]")
            for r in rows:
                console.print(finding_block(r))
        if shown.height < found.height:
            console.print(f"showing {shown.height:,} of {found.height:,}; use --limit 0 or `queue export`")

    @queue_app.command("set")
    def set_status(
        finding_ids: Optional[list[str]] = typer.Argument(None, help="Finding ids (or use --where)."),
        out: Path = out_option,
        status: Optional[str] = typer.Option(
            None, "--status", "-s", help="open, in_progress, fixed, dismissed, deferred."
        ),
        reason: Optional[str] = typer.Option(
            None, "--reason", help="Why dismissed (one of rules/site.yaml dismiss_reasons)."
        ),
        owner: Optional[str] = typer.Option(None, "--owner", help='Who works it ("" clears).'),
        comment: Optional[str] = typer.Option(None, "--comment", help='A note for the next person ("" clears).'),
        until: Optional[str] = typer.Option(
            None, "--until", help="Deferred until (YYYY-MM-DD) with --status deferred."
        ),
        where: Optional[str] = typer.Option(
            None,
            "--where",
            help="Every finding matching: KEY=VALUE,... with KEY queue, status, owner, severity, "
            "payer, rule, date, new (as `queue show` filters; no status = the open work).",
        ),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before changing findings matched by --where."),
        as_: Optional[str] = typer.Option(None, "--as", help="Act as NAME (default: the OS user)."),
    ) -> None:
        """Set status, owner, reason, comment or deferred-until on findings; every change is audited."""
        from b12pipeline.worklog import dismiss_reasons, set_findings
        from b12pipeline.worklog.actions import check_changes
        from b12pipeline.worklog.view import FilterError, parse_where

        changes: dict[str, Any] = {
            k: v
            for k, v in (("status", status), ("reason", reason), ("owner", owner), ("comment", comment))
            if v is not None
        }
        if until is not None:
            changes["deferred_until"] = parse_date(until, "--until")
        if not changes:
            raise usage_error("nothing to set: give --status, --reason, --owner, --comment or --until")
        reasons = dismiss_reasons()
        why = check_changes(changes, reasons)
        if why:
            raise usage_error(why)
        if bool(finding_ids) == bool(where):
            raise usage_error("give finding ids or --where (one of them)")
        if where:
            try:
                filters = parse_where(where)
            except FilterError as exc:
                raise usage_error(str(exc)) from None
            matched = _work(out, filters.pop("queue", None), filters, today())
            ids = matched["finding_id"].to_list()
            if not ids:
                console.print(f"no findings match {where}; nothing changed")
                raise typer.Exit(EXIT_OK)
            console.print(f"{len(ids):,} finding(s) match {where}")
            if not yes and not typer.confirm(f"set {_describe(changes)} on {len(ids):,} finding(s)?", default=False):
                console.print("nothing changed")
                raise typer.Exit(EXIT_OK)
        else:
            _queues_root(out)
            ids = list(finding_ids or [])
        outcome = set_findings(_worklog(out), ids, actor=_actor(as_), interface="cli", reasons=reasons, **changes)
        _print_outcome(outcome)
        raise typer.Exit(EXIT_REJECTED if outcome.refused else EXIT_OK)

    @queue_app.command("history")
    def show_history(
        finding_id: str = typer.Argument(..., help="The finding id (queue show / export, column Finding ID)."),
        out: Path = out_option,
    ) -> None:
        """Everything that happened to one finding, oldest first: when, who, through what, before -> after."""
        from b12pipeline.worklog import history

        steps = history(_worklog(out), finding_id)
        if not steps:
            raise usage_error(f"no finding {finding_id!r} in the worklog of {out}")
        console.print(f"finding {finding_id}, oldest first (times in UTC)")
        for s in steps:
            change = f"{s['field']}: {s['before'] or '(none)'} -> {s['after'] or '(none)'}"
            cause = f"  [{s['cause']}]" if s["cause"] else ""
            console.print(
                f"{s['at']:%Y-%m-%d %H:%M:%S}  {s['actor']} via {s['interface']}  {change}{cause}", soft_wrap=True
            )

    @queue_app.command("export")
    def export(
        queue: str = typer.Argument(..., help="coding, medical_necessity or documentation."),
        to: Path = typer.Option(..., "--to", help="File to write (e.g. coding.xlsx)."),
        fmt: Optional[str] = typer.Option(None, "--format", "-f", help="csv or xlsx; default from --to's suffix."),
        out: Path = out_option,
        date: Optional[str] = typer.Option(None, "--date", "-d", help="Only this date of service (YYYY-MM-DD)."),
        rule: Optional[str] = typer.Option(None, "--rule", "-r", help="Only this rule, e.g. UNITS-001."),
        status: Optional[str] = typer.Option(
            None, "--status", "-s", help="As `queue show`: open-work (default), all, or statuses joined with |."
        ),
        owner: Optional[str] = typer.Option(None, "--owner", help="Only findings owned by NAME."),
        severity: Optional[str] = typer.Option(None, "--severity", help="error, warning or info."),
        payer: Optional[str] = typer.Option(None, "--payer", help="Only this payer type, e.g. medicare."),
        new: bool = typer.Option(False, "--new", help="Only findings new tonight."),
    ) -> None:
        """Write one queue to CSV or Excel with its worklog columns (contains patient identifiers).

        Edit Status, Owner, Reason, Comment and Deferred until in the xlsx, then `queue import` it."""
        from b12pipeline.export import export_csv, export_xlsx

        kind = (fmt or to.suffix.lstrip(".")).lower()
        if kind not in ("csv", "xlsx"):
            raise usage_error(f"--format must be csv or xlsx (got {kind or 'nothing'})")
        filters = _filters(
            date=parse_date(date, "--date"),
            rule=_known_rule(rule, out),
            status=status,
            owner=owner,
            severity=severity,
            payer=payer,
            new=new,
        )
        found = _work(out, _queue_name(queue), filters, today())
        rows = (export_xlsx if kind == "xlsx" else export_csv)(found, to)
        console.print(f"wrote {rows:,} finding(s) of queue {queue} to {to}")
        console.print("[yellow]this file contains patient identifiers: keep it where PHI is allowed[/]")

    @queue_app.command("import")
    def import_edits(
        workbook: Path = typer.Argument(..., help="An xlsx written by `queue export`, edited."),
        out: Path = out_option,
        as_: Optional[str] = typer.Option(None, "--as", help="Act as NAME (default: the OS user)."),
        quiet: bool = quiet_option,
    ) -> None:
        """Apply the Status / Owner / Reason / Comment / Deferred until edits of an export, in one transaction."""
        from b12pipeline.worklog import dismiss_reasons
        from b12pipeline.worklog.excel import ImportRefused, import_workbook

        if not workbook.is_file():
            raise usage_error(f"{workbook}: no such file")
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with feedback(f"import {workbook.name}", quiet) as shown:
                summary = import_workbook(_worklog(out), workbook, actor=_actor(as_), reasons=dismiss_reasons())
                shown.step("done")
        except ImportRefused as exc:
            err_console.print(f"[bold red]refused:[/] {exc}")
            raise typer.Exit(EXIT_REJECTED) from None
        except SQLAlchemyError as exc:  # the transaction rolled back: nothing of this file was applied
            err_console.print(f"[bold red]error:[/] the worklog failed ({type(exc).__name__}); nothing changed")
            raise typer.Exit(EXIT_ENVIRONMENT) from None
        console.print(
            f"{workbook.name}: {summary.rows:,} row(s): changed {summary.changed:,}, "
            f"unchanged {summary.unchanged:,}, refused {len(summary.refused):,}"
        )
        for name, why in summary.refused:
            err_console.print(f"refused {name}: {why}")
        raise typer.Exit(EXIT_REJECTED if summary.refused else EXIT_OK)


def _describe(values: dict) -> str:
    return ", ".join(f"{k}={'' if v is None else v}" for k, v in values.items())


def _status_cell(r: dict) -> str:
    """status (new tonight in bold), owner, first seen and days open, in one narrow cell."""
    status = r["status"]
    lines = [f"[bold]{status}[/]" if r.get("new_tonight") else status]
    if status == "deferred" and r.get("deferred_until"):
        lines[0] += f" to {r['deferred_until'].isoformat()}"
    if r.get("owner"):
        lines.append(r["owner"])
    if r.get("first_seen_night"):
        lines.append(f"since {r['first_seen_night'].isoformat()}, {r['days_open']} d")
    return "\n".join(lines)


def _print_outcome(outcome) -> None:
    console.print(
        f"changed {len(outcome.changed):,}, unchanged {len(outcome.unchanged):,}, refused {len(outcome.refused):,}"
    )
    for name, why in outcome.refused:
        err_console.print(f"refused {name}: {why}")
