"""The run record: manifest.json and the counts-only summary (no patient identifiers anywhere)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from b12pipeline import __version__
from b12pipeline.cms import reference_warnings
from b12pipeline.engine.rulefile import QUEUES
from b12pipeline.files import write_json
from b12pipeline.paths import OutputLayout
from b12pipeline.queues import read_queue


def findings_counts(queues_root: Path, dates: list[str]) -> dict:
    """Findings per rule and per queue on the given dates (what the run left in the queues; every
    date's when none is given). Only those dates' partitions are read: a small night on a year of
    queues read every finding of the year here (~+0.4 s, ~+100 MB at the night's peak)."""
    days = [dt.date.fromisoformat(d) for d in dates] if dates else None
    found = read_queue(queues_root, dates=days, columns=("rule_id", "queue", "severity"))
    by_rule = {r: n for r, n in found.group_by("rule_id").len().sort("rule_id").iter_rows()}
    by_queue = {q: 0 for q in QUEUES}
    by_queue.update({q: n for q, n in found.group_by("queue").len().iter_rows()})
    by_severity = {s: n for s, n in found.group_by("severity").len().sort("severity").iter_rows()}
    return {"per_rule": by_rule, "per_queue": by_queue, "per_severity": by_severity, "total": found.height}


def build_manifest(
    *,
    run_id: str,
    kind: str,
    night: str,
    started_at: str,
    ended_at: str,
    inputs: list[dict],
    applied: dict,
    out: Path,
    ruleset_version: str,
    rules_dir: str,
    ignored: list[dict] | None = None,
) -> dict:
    layout = OutputLayout(out)
    # A rejected file counts no rows (it is kept whole in rejected/), whatever its record says.
    counted = [i for i in inputs if i["status"] == "processed"]
    totals = {k: sum(i.get(k, 0) for i in counted) for k in ("rows_read", "in_scope", "out_of_scope", "quarantined")}
    totals["files"] = len(inputs)
    totals["files_rejected"] = sum(1 for i in inputs if i["status"] == "rejected")
    totals["files_deferred"] = sum(1 for i in inputs if i["status"] == "deferred")
    safe_inputs = [{k: v for k, v in i.items() if k not in ("staged",)} for i in inputs]
    manifest = {
        "run_id": run_id,
        "kind": kind,
        "night": night,
        "started_at": started_at,
        "ended_at": ended_at,
        "software_version": __version__,
        "ruleset_version": ruleset_version,
        "rules_dir": rules_dir,
        "inputs": safe_inputs,
        "ignored": ignored or [],  # landing entries not read, each with the rule that skipped it
        "totals": totals,
        "dates_evaluated": applied.get("dates", []),
        # CMS tables older than the site allows (reference_max_age_quarters): import the new quarter.
        "warnings": reference_warnings(rules_dir or None, dt.date.fromisoformat(night)),
        "findings": findings_counts(layout.queues, applied.get("dates", [])),
        # The worklog's lifecycle update of this run (counts; empty for runs that do not update it).
        "worklog": applied.get("worklog", {}),
        "validation_report": str((layout.run_dir(run_id) / "validation.json").relative_to(out)),
        # Written after this manifest by the flow's run-report task (report_html.py, datadocs.py).
        "validation_docs": str((layout.run_dir(run_id) / "validation" / "index.html").relative_to(out)),
        "run_report": str((layout.run_dir(run_id) / "report.html").relative_to(out)),
        "queues": str(layout.queues),
    }
    write_json(
        layout.run_dir(run_id) / "validation.json",
        {
            "run_id": run_id,
            "note": "counts of rows failing each expectation per file; row values are never recorded here",
            "files": {
                i["file"]: {
                    "status": i["status"],
                    "error": i.get("error", ""),
                    "unexpected_counts": i.get("unexpected_counts", {}),
                }
                for i in inputs
            },
        },
    )
    write_json(layout.run_dir(run_id) / "manifest.json", manifest)
    return manifest


def summary_markdown(manifest: dict) -> str:
    t, f = manifest["totals"], manifest["findings"]
    lines = [
        f"# b12pipeline {manifest['kind']} {manifest['night']}",
        "",
        f"run `{manifest['run_id']}` - ruleset `{manifest['ruleset_version']}`",
        "",
        "| measure | count |",
        "|---|---:|",
    ]
    for key in ("files", "files_rejected", "rows_read", "in_scope", "out_of_scope", "quarantined"):
        lines.append(f"| {key.replace('_', ' ')} | {t[key]:,} |")
    lines += ["", "| queue | findings |", "|---|---:|"]
    lines += [f"| {q} | {n:,} |" for q, n in f["per_queue"].items()]
    return "\n".join(lines) + "\n"


def counts_table(manifest: dict) -> list[dict]:
    return [{"rule_id": r, "findings": n} for r, n in manifest["findings"]["per_rule"].items()]
