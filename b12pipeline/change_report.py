"""The rules-change page: what a deployment, backfill or preview changed, as one static HTML file.

Lists only the rules that changed or whose findings changed. No patient data: counts, rule ids,
titles, versions and finding ids (a finding id is a hash a coder can look up in the queue; it
names no patient). The preview adds each changed rule's YAML diff (rule files are not PHI).
"""

from __future__ import annotations

import html
from pathlib import Path

import polars as pl

from b12pipeline.backfill import CHANGES
from b12pipeline.files import write_text_atomic
from b12pipeline.paths import OutputLayout
from b12pipeline.ruleset_changes import FolderChanges

EXAMPLES_PER_RULE = 5
IDS_PER_RULE = 50

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:70em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
td.n{text-align:right}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
.add{color:#117a65}.del{color:#c0392b}h2{margin-top:1.6em}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _diff_block(text: str) -> str:
    lines = []
    for line in text.splitlines():
        cls = "add" if line.startswith("+") and not line.startswith("+++") else ""
        cls = "del" if line.startswith("-") and not line.startswith("---") else cls
        lines.append(f'<span class="{cls}">{_e(line)}</span>' if cls else _e(line))
    return "<pre>" + "\n".join(lines) + "</pre>"


def rows_of_interest(summary: pl.DataFrame, changes: FolderChanges) -> list[str]:
    """Rule ids that changed, or whose findings changed (new or resolved)."""
    moved = summary.filter((pl.col("new") > 0) | (pl.col("resolved") > 0))["rule_id"].to_list()
    return sorted(set(moved) | changes.changed_rule_ids)


def render_changes(
    heading: str,
    facts: list[tuple[str, str]],
    summary: pl.DataFrame,
    detail: pl.DataFrame,
    changes: FolderChanges,
    titles: dict[str, str],
    work: dict | None = None,
    with_yaml: bool = False,
) -> str:
    """The page. `summary`: per-rule counts (backfill.SUMMARY_COLUMNS); `detail`: per finding."""
    by_rule = {r["rule_id"]: r for r in summary.iter_rows(named=True)}
    change_of = {c.rule_id: c for c in changes.rules}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(heading)}</title>"]
    parts.append(f"<style>{STYLE}</style></head><body><h1>{_e(heading)}</h1><table>")
    parts += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts]
    parts.append("</table>")
    totals = {c: int(summary[c].sum()) if summary.height else 0 for c in CHANGES}
    parts.append(
        "<p>Findings in the range: "
        + ", ".join(f"<b>{totals[c]:,}</b> {c}" for c in CHANGES)
        + ".</p><h2>Rules that changed or whose findings changed</h2>"
    )
    interesting = rows_of_interest(summary, changes)
    if not interesting:
        parts.append("<p>No rule changed and no finding changed.</p>")
    else:
        parts.append(
            "<table><tr><th>rule</th><th>title</th><th>queue</th><th>rule change</th><th>versions</th>"
            + "".join(f"<th>{c}</th>" for c in CHANGES)
            + "</tr>"
        )
        for rule_id in interesting:
            c, counts = change_of.get(rule_id), by_rule.get(rule_id, {})
            versions = f"{', '.join(c.old_versions) or '-'} → {', '.join(c.new_versions) or '-'}" if c else ""
            parts.append(
                f"<tr><td>{_e(rule_id)}</td><td>{_e(titles.get(rule_id, c.title if c else ''))}</td>"
                f"<td>{_e(counts.get('queue') or (c.queue if c else ''))}</td><td>{_e(c.change if c else 'none')}</td>"
                f"<td>{_e(versions)}</td>"
                + "".join(f"<td class='n'>{int(counts.get(k, 0) or 0):,}</td>" for k in CHANGES)
                + "</tr>"
            )
        parts.append("</table>")
    if changes.other_files:
        parts.append("<h2>Settings and reference tables that changed</h2><ul>")
        parts += [f"<li>{_e(name)}</li>" for name in changes.other_files]
        parts.append("</ul>")
    if work:
        parts.append("<h2>Effect on the work queues</h2><table><tr><th>queue</th><th>status now</th>")
        parts.append("<th>would resolve</th><th>would come back</th></tr>")
        for row in work.get("rows", []):
            parts.append(
                f"<tr><td>{_e(row['queue'])}</td><td>{_e(row['status'])}</td>"
                f"<td class='n'>{row['would_resolve']:,}</td><td class='n'>{row['would_return']:,}</td></tr>"
            )
        parts.append(f"</table><p>{_e(work.get('note', ''))}</p>")
    moved = detail.filter(pl.col("change") != "unchanged")
    for rule_id in interesting:
        c = change_of.get(rule_id)
        mine = moved.filter(pl.col("rule_id") == rule_id)
        if c is None and mine.height == 0:
            continue
        parts.append(f"<h2>{_e(rule_id)}</h2>")
        if with_yaml and c is not None and c.diff:
            parts.append(_diff_block(c.diff))
        if mine.height:
            limit = EXAMPLES_PER_RULE if with_yaml else IDS_PER_RULE
            shown = mine.sort("service_date", "finding_id").head(limit)
            parts.append("<table><tr><th>finding id</th><th>date of service</th><th>change</th><th>severity</th></tr>")
            parts += [
                f"<tr><td><code>{_e(r['finding_id'])}</code></td><td>{_e(r['service_date'])}</td>"
                f"<td>{_e(r['change'])}</td><td>{_e(r['severity'])}</td></tr>"
                for r in shown.iter_rows(named=True)
            ]
            parts.append("</table>")
            if mine.height > shown.height:
                parts.append(f"<p>{shown.height} of {mine.height:,} shown.</p>")
    if with_yaml and changes.other_files:
        for name, text in changes.other_files.items():
            parts.append(f"<h2>{_e(name)}</h2>{_diff_block(text)}")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_page(target: Path, page: str) -> Path:
    return write_text_atomic(target, page)


def write_change_report(out: Path | str, manifest: dict, changes: FolderChanges) -> Path:
    """runs/<run_id>/changes.html for a deployment or backfill, beside its manifest and diffs."""
    from b12pipeline.pipeline import Rules

    run_dir = OutputLayout(Path(out)).run_dir(manifest["run_id"])
    summary = pl.read_parquet(run_dir / "diff.parquet")
    detail = pl.read_parquet(run_dir / "diff_findings.parquet")
    titles = {r.id: r.title for r in Rules.load(manifest["rules_dir"]).ruleset.rules}
    dep = manifest.get("deployment", {})
    facts = [
        ("run", manifest["run_id"]),
        ("dates of service", f"{manifest['from']} to {manifest['to']}"),
        ("ruleset", f"{dep.get('from_version') or '(none)'} → {manifest['ruleset_version']}"),
    ]
    if dep:
        facts += [("kind", dep["kind"]), ("deployed by", dep["by"]), ("deployed at", dep["at"])]
    heading = f"b12pipeline {dep.get('kind', 'backfill')} {manifest['ruleset_version']}"
    page = render_changes(heading, facts, summary, detail, changes, titles)
    return write_page(run_dir / "changes.html", page)
