"""History re-run (backfill): re-evaluate the history rows of a date range with the current rules.

plan_backfill     the dates, their chunks and the deterministic run id
backfill_chunk    one chunk of dates: previous findings, new findings, replace the partitions,
                  and the per-finding diff of the chunk (a Parquet file; the path is returned)
summarise_diff    joins the chunks' diffs into diff.parquet (per rule) + diff_findings.parquet
record_backfill   the run record (manifest.json) of a finished backfill

Backfill re-evaluates <out>/history (canonical rows, already superseded by admin_id exactly as the
nights left them); it does not re-ingest the archive (docs/history.md says why). Chunks write
disjoint queue partitions, so they can run in any order, in threads or on Dask workers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from b12pipeline.engine.evaluate import FINDING_COLUMNS
from b12pipeline.engine.rulefile import QUEUES
from b12pipeline.files import sha256_file, write_json
from b12pipeline.history import history_paths
from b12pipeline.paths import OutputLayout
from b12pipeline.pipeline import Rules, findings_for_dates, lookback_days, make_run_id
from b12pipeline.queues import PART_NAME, atomic_write_parquet, partition_dir, write_queue_partitions
from b12pipeline.report import build_manifest

CHANGES = ("new", "resolved", "unchanged")
DETAIL_COLUMNS: dict[str, pl.DataType | type[pl.DataType]] = {
    "finding_id": pl.String,
    "rule_id": pl.String,
    "queue": pl.String,
    "severity": pl.String,
    "service_date": pl.Date,
    "change": pl.String,
    "previous_ruleset_version": pl.String,
    "ruleset_version": pl.String,
    "source_file": pl.String,
    "source_row": pl.Int64,
}
SUMMARY_COLUMNS: dict[str, pl.DataType | type[pl.DataType]] = {
    "rule_id": pl.String,
    "queue": pl.String,
    "new": pl.Int64,
    "resolved": pl.Int64,
    "unchanged": pl.Int64,
    "previous_ruleset_versions": pl.String,
    "ruleset_version": pl.String,
}


@dataclass(frozen=True)
class BackfillPlan:
    start: dt.date
    end: dt.date
    run_id: str
    ruleset_version: str
    chunks: tuple[tuple[dt.date, ...], ...]

    @property
    def dates(self) -> list[dt.date]:
        return [d for chunk in self.chunks for d in chunk]


def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def rerun_range(
    out: Path | str, rules: Rules, start: dt.date | None, end: dt.date | None
) -> tuple[dt.date, dt.date] | None:
    """The dates a deployment or preview re-evaluates: --from/--to, by default the look-back window
    ending at the latest date of service in history; None when there is no history and no range."""
    dates = sorted(history_paths(OutputLayout(Path(out)).history))
    last = end or (max(dates[-1], start) if dates and start else dates[-1] if dates else start)
    if last is None:
        return None
    first = start or last - dt.timedelta(days=lookback_days(rules.config))
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    return first, last


def plan_backfill(
    out: Path | str, start: dt.date, end: dt.date, rules: Rules, chunk_days: int | None = None
) -> BackfillPlan:
    """Every date in [start, end] is re-derived (a date left with no findings loses its partitions).

    The run id hashes the range, the rules and the history the range can see, so re-running the
    same backfill on the same history is byte-identical, and any change to either gives a new id."""
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    if chunk_days is None:
        # Every chunk re-reads and re-derives its whole look-back of history, so chunks as long as
        # the look-back read each history row at most twice (7-day chunks over a year: ~27 times).
        chunk_days = lookback_days(rules.config)
    if chunk_days < 1:
        raise ValueError("chunk_days must be at least 1")
    dates = date_range(start, end)
    reach = start - dt.timedelta(days=lookback_days(rules.config))
    seen = [
        f"{d.isoformat()}:{sha256_file(p)}"
        for d, p in sorted(history_paths(OutputLayout(Path(out)).history).items())
        if reach <= d <= end
    ]
    run_id = make_run_id(end, [f"range:{start}..{end}"] + seen, rules.ruleset.version, kind="backfill")
    chunks = tuple(tuple(dates[i : i + chunk_days]) for i in range(0, len(dates), chunk_days))
    return BackfillPlan(start=start, end=end, run_id=run_id, ruleset_version=rules.ruleset.version, chunks=chunks)


def read_partitions(queues_root: Path, dates: list[dt.date]) -> pl.DataFrame:
    """The findings currently in the queues for `dates` (all queues), service_date restored."""
    frames = []
    for queue in QUEUES:
        for day in dates:
            part = partition_dir(queues_root, queue, day) / PART_NAME
            if part.exists():
                frames.append(pl.read_parquet(part).with_columns(pl.lit(day).alias("service_date")))
    if not frames:
        return pl.DataFrame(schema=FINDING_COLUMNS)
    return pl.concat(frames, how="diagonal_relaxed").select([pl.col(c).cast(t) for c, t in FINDING_COLUMNS.items()])


def diff_findings(previous: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """One row per finding in either frame, compared by finding_id (stable across rule versions)."""
    keep = [
        "finding_id",
        "rule_id",
        "queue",
        "severity",
        "service_date",
        "ruleset_version",
        "source_file",
        "source_row",
    ]
    old = previous.select(keep).rename({"ruleset_version": "previous_ruleset_version"})
    new = current.select(keep)
    both = old.join(new, on="finding_id", how="full", coalesce=True, suffix="_new")
    change = (
        pl.when(pl.col("previous_ruleset_version").is_null())
        .then(pl.lit("new"))
        .when(pl.col("ruleset_version").is_null())
        .then(pl.lit("resolved"))
        .otherwise(pl.lit("unchanged"))
    )
    # Describe a finding as it is now when it still exists, as it was when it was resolved.
    described = [
        pl.coalesce(f"{c}_new", c).alias(c)
        for c in ("rule_id", "queue", "severity", "service_date", "source_file", "source_row")
    ]
    return (
        both.with_columns(change.alias("change"), *described)
        .select([pl.col(c).cast(t) for c, t in DETAIL_COLUMNS.items()])
        .sort("service_date", "rule_id", "finding_id")
    )


def backfill_chunk(out: Path | str, dates: list[dt.date], rules: Rules, run_id: str) -> str:
    """Re-evaluate `dates`, replace exactly their queue partitions, and write the chunk's diff."""
    layout = OutputLayout(Path(out))
    dates = sorted(dates)
    previous = read_partitions(layout.queues, dates)
    current = findings_for_dates(out, dates, rules, run_id)
    write_queue_partitions(current, layout.queues, dates)
    target = layout.run_dir(run_id) / "chunks" / f"diff-{dates[0].isoformat()}.parquet"
    atomic_write_parquet(diff_findings(previous, current), target)
    return str(target)


def summarise_diff(out: Path | str, run_id: str, chunk_paths: list[str], ruleset_version: str) -> dict:
    """Write diff_findings.parquet (per finding) and diff.parquet (per rule); return per-rule counts."""
    run_dir = OutputLayout(Path(out)).run_dir(run_id)
    frames = [pl.read_parquet(p) for p in sorted(chunk_paths)]
    detail = (pl.concat(frames) if frames else pl.DataFrame(schema=DETAIL_COLUMNS)).sort(
        "service_date", "rule_id", "finding_id"
    )
    atomic_write_parquet(detail, run_dir / "diff_findings.parquet")
    summary, counts = summarise_detail(detail, ruleset_version)
    atomic_write_parquet(summary, run_dir / "diff.parquet")
    for p in chunk_paths:
        Path(p).unlink(missing_ok=True)
    if (run_dir / "chunks").is_dir() and not any((run_dir / "chunks").iterdir()):
        (run_dir / "chunks").rmdir()
    return counts


def summarise_detail(detail: pl.DataFrame, ruleset_version: str) -> tuple[pl.DataFrame, dict]:
    """Per-rule counts of a per-finding diff: the frame (diff.parquet) and the same as a dict."""
    counts = (
        detail.group_by("rule_id", "queue")
        .agg(
            *[(pl.col("change") == c).sum().cast(pl.Int64).alias(c) for c in CHANGES],
            pl.col("previous_ruleset_version")
            .drop_nulls()
            .unique()
            .sort()
            .str.join(",")
            .alias("previous_ruleset_versions"),
        )
        .with_columns(pl.lit(ruleset_version).alias("ruleset_version"))
    )
    summary = counts.select([pl.col(c).cast(t) for c, t in SUMMARY_COLUMNS.items()]).sort("queue", "rule_id")
    return summary, {
        "per_rule": {r["rule_id"]: {c: r[c] for c in CHANGES} for r in summary.iter_rows(named=True)},
        "total": {c: int(summary[c].sum()) for c in CHANGES},
        "previous_ruleset_versions": sorted(set(detail["previous_ruleset_version"].drop_nulls().to_list())),
        "ruleset_version": ruleset_version,
    }


def record_backfill(
    out: Path | str,
    plan: BackfillPlan,
    chunk_paths: list[str],
    started_at: str,
    ended_at: str,
    rules_dir: str | None,
    task_runner: str,
) -> dict:
    """Summarise the chunks' diffs and write runs/<run_id>/manifest.json; returns the manifest."""
    diff = summarise_diff(out, plan.run_id, chunk_paths, plan.ruleset_version)
    manifest = build_manifest(
        run_id=plan.run_id,
        kind="backfill",
        night=plan.end.isoformat(),
        started_at=started_at,
        ended_at=ended_at,
        inputs=[],
        applied={"dates": [d.isoformat() for d in plan.dates]},
        out=Path(out),
        ruleset_version=plan.ruleset_version,
        rules_dir=rules_dir or "",
    )
    manifest.update(
        {
            "from": plan.start.isoformat(),
            "to": plan.end.isoformat(),
            "chunks": len(plan.chunks),
            "task_runner": task_runner,
            "diff": diff,
            "diff_report": f"runs/{plan.run_id}/diff.parquet",
            "diff_findings": f"runs/{plan.run_id}/diff_findings.parquet",
        }
    )
    write_json(OutputLayout(Path(out)).run_dir(plan.run_id) / "manifest.json", manifest)
    return manifest


def diff_markdown(manifest: dict) -> str:
    """Counts only: no finding ids, no patient identifiers."""
    diff = manifest["diff"]
    previous = ", ".join(f"`{v}`" for v in diff["previous_ruleset_versions"]) or "(none)"
    lines = [
        f"# b12pipeline backfill {manifest['from']} .. {manifest['to']}",
        "",
        f"run `{manifest['run_id']}` - ruleset {previous} -> `{diff['ruleset_version']}`",
        "",
        "| rule | new | resolved | unchanged |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {rule} | {c['new']:,} | {c['resolved']:,} | {c['unchanged']:,} |"
        for rule, c in sorted(diff["per_rule"].items())
    ]
    t = diff["total"]
    lines.append(f"| **total** | **{t['new']:,}** | **{t['resolved']:,}** | **{t['unchanged']:,}** |")
    return "\n".join(lines) + "\n"
