"""`b12pipeline rules list | test | lint | docs`: the tooling around rule files.

Exit codes: 0 ok; 1 a case failed, lint found problems, or docs are stale (--check); 2 usage error
(for list/test/docs: a rule file the loader refuses; `lint` reports those as problems instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from b12pipeline.cli.common import EXIT_OK, console, err_console, usage_error
from b12pipeline.paths import PROJECT_ROOT

EXIT_FAILED = 1
DEFAULT_DOCS = PROJECT_ROOT / "docs" / "rules.md"
LANGUAGE_DOCS = "writing-rules.md"  # written beside the catalog
RULES_HELP = "Rules folder (default: the project's rules/)."

rules_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="List, test, lint and document the rule files."
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
    from b12pipeline.rulecases import run_payer_cases, run_rule_cases

    loaded = _load(rules)
    selected = [r for r in loaded.ruleset.rules if rule_id is None or r.id == rule_id]
    if not selected:
        raise usage_error(f"no rule with id {rule_id!r}")
    results = [res for r in selected for res in run_rule_cases(r, loaded)]
    # Payer files' cases (each names the rule it checks): all of them, or those of --id.
    results += [
        res
        for p in loaded.ruleset.payers
        for res in run_payer_cases(p, loaded)
        if rule_id is None or res.rule_id.endswith(f": {rule_id}")
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
        console.print(f"[red]{escape(p.file)}[/]: [bold]{escape(p.field)}[/]: {escape(p.message)}", soft_wrap=True)
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
        page.parent.mkdir(parents=True, exist_ok=True)
        tmp = page.with_name(f".{page.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(page)
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
