"""Preview a rules change: evaluate history with candidate rules and diff against the queues.

Reads <out>/history and <out>/queues and writes only <out>/previews/<preview_id>/:
  diff.parquet           per rule and queue: findings new / resolved / unchanged
  diff_findings.parquet  per finding (ids, rule, date; no patient identifiers)
  preview.json           the counts, the rules that changed, the effect on open work
  report.html            the same as a page, with each changed rule's YAML diff
It takes no output lock (the lock file records its holder, and a preview must leave <out> as it
found it); it reads files the night replaces atomically, so a preview during a night sees each
date either before or after that night.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

import polars as pl

from b12pipeline import progress
from b12pipeline.backfill import (
    DETAIL_COLUMNS,
    date_range,
    diff_findings,
    read_partitions,
    rerun_range,
    summarise_detail,
)
from b12pipeline.change_report import render_changes, write_page
from b12pipeline.deployments import RulesetError, read_active, snapshot_dir
from b12pipeline.files import write_json
from b12pipeline.paths import OutputLayout
from b12pipeline.pipeline import Rules, findings_for_dates, lookback_days
from b12pipeline.queues import atomic_write_parquet
from b12pipeline.ruleset_changes import FolderChanges, load_folder, rule_changes
from b12pipeline.runguard import run_umask


def candidate_diff(out: Path, rules: Rules, dates: list[dt.date], run_id: str) -> pl.DataFrame:
    """Per-finding diff of the queues' current findings on `dates` against `rules`' findings.

    Evaluated in look-back-long chunks, like a backfill: each chunk reads its look-back of history."""
    step = lookback_days(rules.config)
    frames = []
    queues = OutputLayout(out).queues
    for i in range(0, len(dates), step):
        chunk = dates[i : i + step]
        found = findings_for_dates(out, chunk, rules, run_id)
        frames.append(diff_findings(read_partitions(queues, chunk), found))
        progress.step(f"evaluated {chunk[0]}..{chunk[-1]}: {found.height:,} finding(s)")
    return pl.concat(frames) if frames else pl.DataFrame(schema=DETAIL_COLUMNS)


def worklog_states(out: Path, ids: list[str]) -> pl.DataFrame | None:
    """What coders decided about `ids`, read without writing anything under `out` (None: no worklog).

    Opening the embedded SQLite worklog in place would write its -shm file, so a private copy (the
    database and its write-ahead log) in a temporary folder outside `out` is read; a worklog on a
    database server (B12_WORKLOG_URL) is read through the worklog's own API."""
    from sqlalchemy import create_engine

    from b12pipeline.worklog import open_worklog, read_states, worklog_url

    url = worklog_url(out)
    if not url.startswith("sqlite:///"):
        return read_states(open_worklog(url=url), ids)
    path = Path(url.removeprefix("sqlite:///"))
    if not path.is_file():
        return None
    with tempfile.TemporaryDirectory(prefix="b12-preview-") as scratch:
        copy = Path(scratch) / path.name  # with its -wal: what the last writer committed
        for suffix in ("", "-wal"):
            if Path(f"{path}{suffix}").is_file():
                shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
        engine = create_engine(f"sqlite:///{copy}", hide_parameters=True)
        try:
            return read_states(engine, ids)
        finally:
            engine.dispose()


def work_effect(out: Path, detail: pl.DataFrame) -> dict:
    """What the change would do to people's work, per queue and current status: open items that
    would resolve, and dismissed, fixed or resolved items that would come back."""
    from b12pipeline.worklog import CLOSED_STATUSES, OPEN_STATUSES

    moved = detail.filter(pl.col("change") != "unchanged").select("finding_id", "queue", "change")
    if moved.height == 0:
        return {"rows": [], "note": "No finding would be added or resolved: nobody's work changes."}
    states = worklog_states(out, moved["finding_id"].to_list())
    if states is None:
        resolved = moved.filter(pl.col("change") == "resolved").group_by("queue").len()
        rows = [
            {"queue": q, "status": "open", "would_resolve": int(n), "would_return": 0}
            for q, n in sorted(resolved.iter_rows())
        ]
        return {"rows": rows, "note": "No worklog yet: every finding now in a queue counts as open work."}
    joined = moved.join(states.select("finding_id", "status"), on="finding_id", how="left")
    counts = (
        joined.with_columns(pl.col("status").fill_null("not in the worklog"))
        .group_by("queue", "status")
        .agg(
            ((pl.col("change") == "resolved") & pl.col("status").is_in(OPEN_STATUSES)).sum().alias("would_resolve"),
            ((pl.col("change") == "new") & pl.col("status").is_in(CLOSED_STATUSES)).sum().alias("would_return"),
        )
        .filter((pl.col("would_resolve") > 0) | (pl.col("would_return") > 0))
        .sort("queue", "status")
    )
    rows = [{k: (int(v) if isinstance(v, int) else v) for k, v in r.items()} for r in counts.iter_rows(named=True)]
    return {"rows": rows, "note": "From the coders' worklog: statuses as they are now."}


def preview(out: Path | str, candidate: Path | str, start: dt.date | None = None, end: dt.date | None = None) -> dict:
    """Evaluate `candidate` on the range and write the preview; returns its summary (counts only)."""
    out, candidate = Path(out), Path(candidate)
    rules = load_folder(candidate)
    active = read_active(out)
    baseline = snapshot_dir(out, active.version) if active else None
    try:
        span = rerun_range(out, rules, start, end)
    except ValueError as exc:
        raise RulesetError(str(exc)) from None
    dates = date_range(*span) if span else []
    first, last = span if span else (None, None)
    preview_id = (
        f"{rules.ruleset.version}-{span[0]:%Y%m%d}-{span[1]:%Y%m%d}" if span else f"{rules.ruleset.version}-empty"
    )
    progress.step(f"ruleset {rules.ruleset.version}: {len(dates):,} date(s) to evaluate")
    detail = candidate_diff(out, rules, dates, f"preview-{preview_id}")
    summary, counts = summarise_detail(detail, rules.ruleset.version)
    changes = rule_changes(baseline, candidate) if baseline else FolderChanges(rules=[], other_files={})
    work = work_effect(out, detail)
    progress.step(f"worklog read: {sum(r['would_resolve'] for r in work['rows']):,} open item(s) would resolve")
    result = {
        "preview_id": preview_id,
        "active_version": active.version if active else "",
        "candidate_version": rules.ruleset.version,
        "from": first.isoformat() if first else "",
        "to": last.isoformat() if last else "",
        "diff": counts,
        "rules": [c.to_dict() for c in changes.rules],
        "settings_changed": sorted(changes.other_files),
        "work": work,
    }
    target = OutputLayout(out).previews / preview_id
    previous_umask = os.umask(run_umask())  # owner-only, as everything under --out
    try:
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_parquet(detail, target / "diff_findings.parquet")
        atomic_write_parquet(summary, target / "diff.parquet")
        titles = {r.id: r.title for r in rules.ruleset.rules}
        facts = [
            ("preview", preview_id),
            ("dates of service", f"{result['from']} to {result['to']}" if span else "(no history yet)"),
            ("ruleset", f"{result['active_version'] or '(none deployed)'} → {result['candidate_version']} (candidate)"),
            ("candidate folder", str(candidate)),
        ]
        page = render_changes(
            f"b12pipeline rules preview {preview_id}", facts, summary, detail, changes, titles, work, with_yaml=True
        )
        write_page(target / "report.html", page)
        write_json(target / "preview.json", result)
        progress.step(f"report written: previews/{preview_id}")
    finally:
        os.umask(previous_umask)
    result["dir"] = str(target)
    return result
