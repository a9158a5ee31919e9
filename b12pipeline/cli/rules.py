"""`b12pipeline rules list | test | lint | docs | check | preview | deploy | active | rollback`.

Exit codes: 0 ok; 1 a case failed, lint found problems, docs are stale (--check), or `check` found
a gate failure; 2 usage error (for list/test/docs: a rule file the loader refuses; `lint` reports
those as problems instead; `deploy`/`rollback`: a gate failed or the folder does not load, nothing
changed); 3 another run holds --out (`deploy`, `rollback`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from b12pipeline.cli.common import EXIT_OK, console, err_console, usage_error
from b12pipeline.cli.feedback import feedback, quiet_option
from b12pipeline.files import write_text_atomic
from b12pipeline.paths import PROJECT_ROOT

EXIT_FAILED = 1
DEFAULT_DOCS = PROJECT_ROOT / "docs" / "rules.md"
LANGUAGE_DOCS = "writing-rules.md"  # written beside the catalog
RULES_HELP = "Rules folder (default: the project's rules/)."

rules_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="List, test, lint and document the rule files; preview, deploy and roll back a ruleset.",
)


def _folder(rules: Optional[Path]) -> Path:
    from b12pipeline.paths import rules_dir

    folder = rules or rules_dir()
    if not folder.is_dir():
        raise usage_error(escape(f"--rules {folder} is not a folder"))
    return folder


def _load(rules: Optional[Path]):
    """Rules (ruleset, site config, reference) or a usage error naming the bad file."""
    from b12pipeline.engine.rulefile import RuleFileError
    from b12pipeline.engine.settings import ConfigError
    from b12pipeline.pipeline import Rules

    folder = _folder(rules)
    try:
        return Rules.load(folder)
    except (RuleFileError, ConfigError) as exc:
        raise usage_error(escape(f"{exc}\n(run `b12pipeline rules lint` to see every problem)")) from None


def _short_window(rule) -> str:
    lo, hi = rule.effective_from, rule.effective_to
    if lo is None and hi is None:
        return "always"
    return f"{lo or '...'} to {hi or '...'}"


@rules_app.command("list")
def list_rules(rules: Optional[Path] = typer.Option(None, "--rules", help=RULES_HELP)) -> None:
    """Table of every rule file: id, version, status, queue, severity, effective window, title."""
    from b12pipeline.engine.ruledocs import sorted_rules

    loaded = _load(rules)
    table = Table(title=f"{len(loaded.ruleset.rules)} rule file(s), ruleset {loaded.ruleset.version}")
    for col in ("id", "version", "status", "queue", "severity", "effective", "title"):
        table.add_column(col, overflow="fold")
    for r in sorted_rules(loaded.ruleset.rules):
        status = r.status if r.status == "active" else f"[dim]{r.status}[/]"
        table.add_row(r.id, r.version, status, r.queue, r.severity, _short_window(r), escape(r.title))
    console.print(table)


@rules_app.command("test")
def test_rules(
    rules: Optional[Path] = typer.Option(None, "--rules", help=RULES_HELP),
    rule_id: Optional[str] = typer.Option(None, "--id", help="Only this rule id."),
) -> None:
    """Run every rule's own cases (fires / passes) and every payer file's; exit 1 if any case fails."""
    from b12pipeline.rulecases import run_cases

    loaded = _load(rules)
    selected = [r for r in loaded.ruleset.rules if rule_id is None or r.id == rule_id]
    if not selected:
        raise usage_error(f"no rule with id {rule_id!r}")
    # Every rule's cases and every payer file's (each names the rule it checks, "payers/<file>: <id>"),
    # evaluated together; with --id, only that rule's.
    results = [
        res
        for res in run_cases(selected, loaded.ruleset.payers, loaded)
        if rule_id is None or res.rule_id == rule_id or res.rule_id.endswith(f": {rule_id}")
    ]
    failed = [res for res in results if not res.ok]
    if failed:
        table = Table(title=f"{len(failed)} failing case(s)")
        for col in ("rule", "case", "note", "problem"):
            table.add_column(col, overflow="fold")
        for res in failed:
            table.add_row(res.rule_id, f"{res.kind}[{res.index}]", escape(res.note), escape(res.detail))
        console.print(table)
    console.print(f"{len(results) - len(failed)} of {len(results)} case(s) passed in {len(selected)} rule file(s)")
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


@rules_app.command("lint")
def lint(rules: Optional[Path] = typer.Option(None, "--rules", help=RULES_HELP)) -> None:
    """Check every rule file (fields, citations, cases, windows, columns, settings, names); exit 1 on problems."""
    from b12pipeline.rulelint import lint_rules

    folder = _folder(rules)
    problems = lint_rules(folder)
    for p in problems:
        where = f"{p.file}:{p.line}:{p.column}" if p.line else p.file
        console.print(f"[red]{escape(where)}[/]: [bold]{escape(p.field)}[/]: {escape(p.message)}", soft_wrap=True)
    if problems:
        files = len({p.file for p in problems})
        err_console.print(f"{len(problems)} problem(s) in {files} file(s) under {folder}")
        raise typer.Exit(EXIT_FAILED)
    console.print(f"rules lint: clean ({folder})")


@rules_app.command("docs")
def docs(
    rules: Optional[Path] = typer.Option(None, "--rules", help=RULES_HELP),
    out: Path = typer.Option(DEFAULT_DOCS, "--out", help="Markdown file of the rule catalog to write."),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 if a page is not up to date."),
) -> None:
    """Generate the rule catalog (docs/rules.md) from the rule files, and the rule language
    (writing-rules.md beside it) from the operator table and the rule-file schema."""
    from b12pipeline.engine.ruledocs import render_language_markdown, render_rules_markdown

    pages = {out: render_rules_markdown(_load(rules).ruleset), out.with_name(LANGUAGE_DOCS): render_language_markdown()}
    if check:
        stale = [p for p, text in pages.items() if (p.read_text(encoding="utf-8") if p.is_file() else None) != text]
        for page in stale:
            err_console.print(f"{page} is stale: run `b12pipeline rules docs` (or `make docs`) and commit it")
        if stale:
            raise typer.Exit(EXIT_FAILED)
        console.print(f"{', '.join(map(str, pages))} up to date")
        return
    for page, text in pages.items():
        write_text_atomic(page, text)
        console.print(f"wrote {page}")


@rules_app.command("stats")
def stats(
    out: Path = typer.Option(Path("var"), "--out", "-o", help="Output root whose worklog to read."),
) -> None:
    """How good each rule is, from what coders decided: raised, fixed, dismissed (by reason),
    auto-resolved, median days to close, precision = fixed / (fixed + dismissed as false positive)."""
    from b12pipeline.cli.queue import _worklog
    from b12pipeline.worklog.queries import rule_stats

    if not out.is_dir():
        raise usage_error(escape(f"--out {out} is not a folder"))
    frame = rule_stats(_worklog(out))
    if frame.height == 0:
        console.print(f"no findings in the worklog of {out} yet")
        return
    table = Table(
        title=f"Rule effectiveness in {out}",
        caption="resolved: by a re-evaluation; days: median days to close; "
        "precision: fixed / (fixed + dismissed as false positive), blank until a coder decided one",
    )
    table.add_column("rule", no_wrap=True)
    for col in ("raised", "open", "fixed", "dismissed", "resolved", "days", "precision"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in frame.iter_rows(named=True):
        median = r["median_days_to_close"]
        table.add_row(
            r["rule_id"],
            f"{r['raised']:,}",
            f"{r['open']:,}",
            f"{r['fixed']:,}",
            f"{r['dismissed']:,}",
            f"{r['auto_resolved']:,}",
            "" if median is None else f"{median:g}",
            "" if r["precision"] is None else f"{r['precision']:.0%}",
        )
    console.print(table)
    for r in frame.filter(frame["dismissed"] > 0).iter_rows(named=True):
        console.print(f"{r['rule_id']} dismissed: {escape(r['dismissed_by_reason'])}")


def register(app: typer.Typer) -> None:
    app.add_typer(rules_app, name="rules")


OUT_HELP = "Output root the nightly run writes to."


def deploy_or_exit(folder: Path, out: Path, start=None, end=None, **options) -> dict:
    """Deploy through the gates; every refusal is one line (plus the gate reasons) and its exit code."""
    from flows.deploy import deploy_rules

    return _deploying(deploy_rules, folder, out, start, end, **options)


def _deploying(action, *args, **options) -> dict:
    from b12pipeline.cli.common import EXIT_BUSY
    from b12pipeline.deployments import RulesetError
    from b12pipeline.runguard import OutputLocked
    from flows.deploy import GatesFailed

    try:
        return action(*args, **options)
    except GatesFailed as exc:
        for reason in exc.reasons:
            console.print(f"[red]refused[/] {escape(reason)}", soft_wrap=True)
        raise usage_error(escape(str(exc))) from None
    except OutputLocked as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_BUSY) from None
    except RulesetError as exc:
        raise usage_error(escape(str(exc))) from None


def print_deployment(manifest: dict, out: Path) -> None:
    dep = manifest["deployment"]
    console.print(
        f"{dep['kind']}: ruleset {dep['from_version'] or '(none)'} -> {dep['to_version']} on {out} by {dep['by']}"
    )
    if manifest.get("diff"):
        t = manifest["diff"]["total"]
        console.print(
            f"re-evaluated {manifest['from']}..{manifest['to']}: {t['new']:,} new, {t['resolved']:,} resolved, "
            f"{t['unchanged']:,} unchanged finding(s)"
        )
        console.print(f"report:     {out / manifest['change_report']}")
        console.print(f"run record: {out / 'runs' / manifest['run_id'] / 'manifest.json'}")
    else:
        console.print("no history under --out yet: nothing to re-evaluate")


def _range(date_from: Optional[str], date_to: Optional[str]):
    from b12pipeline.cli.common import parse_date

    start, end = parse_date(date_from, "--from"), parse_date(date_to, "--to")
    if start and end and end < start:
        raise usage_error(f"--to {end} is before --from {start}")
    return start, end


@rules_app.command("deploy")
def deploy(
    rules: Path = typer.Option(..., "--rules", help="The rules folder to deploy."),
    out: Path = typer.Option(Path("var"), "--out", "-o", help=OUT_HELP),
    date_from: Optional[str] = typer.Option(
        None, "--from", help="Re-evaluate from this date of service (default: the look-back window)."
    ),
    quiet: bool = quiet_option,
) -> None:
    """Deploy a rules folder on --out: gates (lint, cases, version bumps), snapshot, switch, re-evaluate.

    Exit 2 with the reasons when a gate fails (nothing is changed), 3 when a run holds --out."""
    start, _ = _range(date_from, None)
    with feedback(f"deploy {rules.name}", quiet) as shown:
        manifest = deploy_or_exit(rules, out, start)
        shown.step("done")
    print_deployment(manifest, out)


@rules_app.command("rollback")
def rollback(
    out: Path = typer.Option(Path("var"), "--out", "-o", help=OUT_HELP),
    to: Optional[str] = typer.Option(None, "--to", help="Version to return to (default: the one before the active)."),
    date_from: Optional[str] = typer.Option(
        None, "--from", help="Re-evaluate from this date of service (default: the look-back window)."
    ),
    quiet: bool = quiet_option,
) -> None:
    """Redeploy an earlier ruleset of --out, through the same gates and re-evaluation as a deploy."""
    from flows.deploy import rollback as rollback_to

    start, _ = _range(date_from, None)
    with feedback("rollback", quiet) as shown:
        manifest = _deploying(rollback_to, out, to, start=start)
        shown.step("done")
    print_deployment(manifest, out)


@rules_app.command("active")
def active(out: Path = typer.Option(Path("var"), "--out", "-o", help=OUT_HELP)) -> None:
    """The ruleset deployed on --out: version, when, by whom, and what it replaced."""
    from b12pipeline.deployments import RulesetError, read_active

    try:
        dep = read_active(out)
    except RulesetError as exc:
        raise usage_error(escape(str(exc))) from None
    if dep is None:
        raise usage_error(escape(f"{out}: no ruleset deployed yet (the first run deploys the shipped rules/)"))
    console.print(f"active ruleset {dep.version} on {out}")
    console.print(
        f"{dep.kind} at {dep.deployed_at} by {dep.deployed_by}" + (f" (run {dep.run_id})" if dep.run_id else "")
    )
    if dep.previous_version:
        console.print(f"replaced {dep.previous_version} (`b12pipeline rules rollback --out {out}` returns to it)")


@rules_app.command("check")
def check(
    folder: Path = typer.Argument(..., help="The rules folder to check (e.g. a compliance repository checkout)."),
    against: Optional[Path] = typer.Option(
        None, "--against", help="An earlier rules folder to compare versions with (e.g. the main branch)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Or compare with the ruleset deployed on this output root."),
) -> None:
    """The deploy gates, for a CI job: lint, every case, and version bumps of changed rules.

    Exit 0 when `rules deploy` would accept FOLDER, 1 when a gate fails (each reason printed),
    2 when FOLDER (or --against) does not load or the options are wrong."""
    from b12pipeline.deployments import RulesetError, read_active, snapshot_dir
    from b12pipeline.ruleset_changes import gate_failures

    if against is not None and out is not None:
        raise usage_error("give --against or --out, not both")
    try:
        baseline = against
        if out is not None:
            dep = read_active(out)
            baseline = snapshot_dir(out, dep.version) if dep else None
        reasons = gate_failures(folder, baseline)
    except RulesetError as exc:
        raise usage_error(escape(str(exc))) from None
    for reason in reasons:
        console.print(f"[red]fail[/] {escape(reason)}", soft_wrap=True)
    if reasons:
        err_console.print(f"{len(reasons)} gate failure(s) in {folder}")
        raise typer.Exit(EXIT_FAILED)
    compared = f" (versions compared with {baseline})" if baseline else ""
    console.print(f"rules check: {folder} passes lint, cases and version checks{compared}")


@rules_app.command("preview")
def preview(
    rules: Path = typer.Option(..., "--rules", help="The candidate rules folder."),
    out: Path = typer.Option(Path("var"), "--out", "-o", help=OUT_HELP),
    date_from: Optional[str] = typer.Option(None, "--from", help="First date of service (default: the look-back)."),
    date_to: Optional[str] = typer.Option(None, "--to", help="Last date of service (default: the latest in history)."),
    quiet: bool = quiet_option,
) -> None:
    """What deploying --rules would change: findings new / resolved / unchanged per rule and queue.

    Writes only <out>/previews/<id>/ (HTML and Parquet); the queues, history, worklog and the active
    ruleset are left exactly as they are."""
    from b12pipeline.deployments import RulesetError
    from b12pipeline.preview import preview as run_preview

    start, end = _range(date_from, date_to)
    try:
        with feedback(f"preview {rules.name}", quiet) as shown:
            result = run_preview(out, rules, start, end)
            shown.step("done")
    except RulesetError as exc:
        raise usage_error(escape(str(exc))) from None
    console.print(
        f"preview of ruleset {result['candidate_version']} against {result['active_version'] or '(none deployed)'}"
        + (f" on {result['from']}..{result['to']}" if result["from"] else " (no history yet)")
    )
    for change in result["rules"]:
        versions = f"{', '.join(change['old_versions']) or '-'} -> {', '.join(change['new_versions']) or '-'}"
        console.print(f"  {change['change']:8} {change['rule_id']} ({versions}) {escape(change['title'])}")
    for name in result["settings_changed"]:
        console.print(f"  changed  {name}")
    moved = {r: c for r, c in result["diff"]["per_rule"].items() if c["new"] or c["resolved"]}
    if moved:
        table = Table(title="Findings that would change")
        for col in ("rule", "new", "resolved", "unchanged"):
            table.add_column(col, justify="left" if col == "rule" else "right")
        for rule, c in sorted(moved.items()):
            table.add_row(rule, f"{c['new']:,}", f"{c['resolved']:,}", f"{c['unchanged']:,}")
        console.print(table)
    t = result["diff"]["total"]
    console.print(f"total: {t['new']:,} new, {t['resolved']:,} resolved, {t['unchanged']:,} unchanged")
    for row in result["work"]["rows"]:
        console.print(f"  {row['queue']}: {row['would_resolve']:,} {row['status']} item(s) would resolve")
    console.print(f"report:     {Path(result['dir']) / 'report.html'}")
    console.print(f"deploy it:  b12pipeline rules deploy --rules {rules} --out {out}")
