"""The backfill flow: re-evaluate history for a date range with the current rules, chunk by chunk.

Thin by design: tasks get paths, dates and the rules folder, never frames, so the same flow runs
on Prefect's default thread pool or, through prefect-dask, on a local or existing Dask cluster.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

import b12pipeline  # noqa: F401  (telemetry defaults before prefect is imported)
from b12pipeline import backfill, deployments, pipeline, progress
from b12pipeline.change_report import write_change_report
from b12pipeline.files import write_json
from b12pipeline.paths import OutputLayout
from b12pipeline.ruleset_changes import FolderChanges


@task(name="backfill-chunk", retries=2, retry_delay_seconds=[2, 10])
def backfill_chunk(out: str, dates: list[str], rules_dir: str | None, run_id: str) -> str:
    # Rules are loaded where the task runs (a Dask worker needs the rules folder at the same path).
    return backfill.backfill_chunk(
        out, [dt.date.fromisoformat(d) for d in dates], pipeline.Rules.load(rules_dir), run_id
    )


@task(name="backfill-worklog", retries=2, retry_delay_seconds=[2, 10])
def backfill_worklog(out: str, plan: backfill.BackfillPlan, cause: str | None = None, actor: str | None = None) -> dict:
    """The re-evaluated dates applied to the coders' worklog (resolved / new / reopened), with the
    backfill (or the deployment it carries out, `cause`) as the cause of each change: counts only."""
    from b12pipeline.worklog import apply_evaluation_from_queues

    why = f"{cause}, run {plan.run_id}" if cause else f"backfill {plan.run_id}"
    return apply_evaluation_from_queues(out, plan.dates, night=plan.end, cause=why, actor=actor)


@task(name="backfill-record")
def backfill_record(
    out: str,
    plan: backfill.BackfillPlan,
    chunk_paths: list[str],
    started_at: str,
    rules_dir: str | None,
    task_runner: str,
    worklog: dict | None = None,
) -> dict:
    ended_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    manifest = backfill.record_backfill(out, plan, chunk_paths, started_at, ended_at, rules_dir, task_runner)
    if worklog is not None:
        manifest["worklog"] = worklog
        write_json(OutputLayout(Path(out)).run_dir(plan.run_id) / "manifest.json", manifest)
    return manifest


@flow(name="b12-backfill", log_prints=False)
def backfill_flow(
    start: dt.date,
    end: dt.date,
    out: str,
    rules_dir: str | None = None,
    chunk_days: int | None = None,
    worklog_cause: str | None = None,
    worklog_actor: str | None = None,
) -> dict:
    """Re-evaluate history rows with service_date in [start, end]; replace those dates' partitions.
    `worklog_cause`/`worklog_actor`: what the worklog records as the cause (and who), for a deployment."""
    logger = get_run_logger()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    rules = pipeline.Rules.load(rules_dir)
    plan = backfill.plan_backfill(out, start, end, rules, chunk_days=chunk_days)
    logger.info(
        "backfill %s: %s..%s in %d chunk(s), ruleset %s",
        plan.run_id,
        start,
        end,
        len(plan.chunks),
        plan.ruleset_version,
    )
    progress.step(f"re-evaluating {len(plan.dates):,} date(s) in {len(plan.chunks):,} chunk(s)")
    futures = [
        backfill_chunk.submit(out, [d.isoformat() for d in chunk], rules_dir, plan.run_id) for chunk in plan.chunks
    ]
    chunk_paths = []
    for i, (chunk, future) in enumerate(zip(plan.chunks, futures, strict=True), start=1):
        # Said here, not in the chunk: on Dask the chunk runs in another process.
        chunk_paths.append(future.result())
        progress.step(f"chunk {i} of {len(plan.chunks)} re-evaluated: {chunk[0]}..{chunk[-1]}")
    context = FlowRunContext.get()
    runner = type(context.task_runner).__name__ if context else "none"
    worklog = backfill_worklog(out, plan, worklog_cause, worklog_actor)
    moved = ", ".join(f"{worklog.get(k, 0):,} {k}" for k in ("new", "reopened", "resolved"))
    progress.step(f"worklog: {moved}")
    manifest = backfill_record(out, plan, chunk_paths, started_at, rules_dir, runner, worklog)
    t = manifest["diff"]["total"]
    progress.step(f"diff: {t['new']:,} new, {t['resolved']:,} resolved, {t['unchanged']:,} unchanged finding(s)")
    create_markdown_artifact(
        key="b12-backfill-diff",
        markdown=backfill.diff_markdown(manifest),
        description="Findings new / resolved / unchanged per rule: counts only.",
    )
    create_table_artifact(
        key="b12-backfill-diff-per-rule",
        table=[{"rule_id": r, **c} for r, c in sorted(manifest["diff"]["per_rule"].items())],
        description="Backfill diff per rule (counts only).",
    )
    return manifest


DASK_CHUNK_DAYS = 7


def task_runner(dask_address: str | None = None, workers: int | None = None):
    """Prefect's thread pool by default; a Dask cluster (existing, or local with N workers) on request."""
    if dask_address and workers:
        raise ValueError("give either a Dask address or a number of local workers, not both")
    if not dask_address and not workers:
        # Bounded: Prefect's default pool has no limit, so every chunk ran at once, each holding its
        # look-back of history (a 365-night backfill of 1.1M rows was OOM-killed at 22 GB, bench/RESULTS.md).
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1)
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


def run_backfill(
    start: dt.date,
    end: dt.date,
    out: str,
    rules_dir: str | None = None,
    chunk_days: int | None = None,
    dask_address: str | None = None,
    workers: int | None = None,
) -> dict:
    """Re-evaluate [start, end] with the output root's active ruleset. A `rules_dir` other than the
    deployed one is refused (RulesetMismatch): new rules come in through flows/deploy.py, gates first,
    so a backfill never evaluates history with rules the next night would not use."""
    from b12pipeline.runguard import guard_output

    with guard_output(out):  # one run per output root, owner-only files (b12pipeline/runguard.py)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        folder = deployments.resolve_rules(out, rules_dir, now, deployments.operator_name())
        manifest = reevaluate(start, end, out, str(folder), chunk_days, dask_address, workers)
        manifest["change_report"] = f"runs/{manifest['run_id']}/changes.html"
        write_json(Path(out) / "runs" / manifest["run_id"] / "manifest.json", manifest)
        write_change_report(out, manifest, FolderChanges(rules=[], other_files={}))
        return manifest


def reevaluate(
    start: dt.date,
    end: dt.date,
    out: str,
    rules_dir: str,
    chunk_days: int | None = None,
    dask_address: str | None = None,
    workers: int | None = None,
    worklog_cause: str | None = None,
    worklog_actor: str | None = None,
) -> dict:
    """Run the backfill flow on the chosen task runner (the caller holds the output lock). Default
    chunking: the look-back length on the local thread pool (Polars already uses every core), 7 days
    on Dask (chunks are its parallelism)."""
    if chunk_days is None and (dask_address or workers):
        chunk_days = DASK_CHUNK_DAYS
    target = backfill_flow.with_options(task_runner=task_runner(dask_address, workers))
    return target(
        start=start,
        end=end,
        out=out,
        rules_dir=rules_dir,
        chunk_days=chunk_days,
        worklog_cause=worklog_cause,
        worklog_actor=worklog_actor,
    )
