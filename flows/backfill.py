"""The backfill flow: re-evaluate history for a date range with the current rules, chunk by chunk.

Thin by design: tasks get paths, dates and the rules folder, never frames, so the same flow runs
on Prefect's default thread pool or, through prefect-dask, on a local or existing Dask cluster.
"""

from __future__ import annotations

import datetime as dt
import os

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

import b12pipeline  # noqa: F401  (telemetry defaults before prefect is imported)
from b12pipeline import backfill, pipeline


@task(name="backfill-chunk", retries=2, retry_delay_seconds=[2, 10])
def backfill_chunk(out: str, dates: list[str], rules_dir: str | None, run_id: str) -> str:
    # Rules are loaded where the task runs (a Dask worker needs the rules folder at the same path).
    return backfill.backfill_chunk(
        out, [dt.date.fromisoformat(d) for d in dates], pipeline.Rules.load(rules_dir), run_id
    )


@task(name="backfill-worklog", retries=2, retry_delay_seconds=[2, 10])
def backfill_worklog(out: str, plan: backfill.BackfillPlan) -> dict:
    """The re-evaluated dates applied to the coders' worklog (resolved / new / reopened), with the
    backfill as the cause of each change: counts only."""
    from b12pipeline.worklog import apply_evaluation_from_queues

    return apply_evaluation_from_queues(out, plan.dates, night=plan.end, cause=f"backfill {plan.run_id}")


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
    return backfill.record_backfill(out, plan, chunk_paths, started_at, ended_at, rules_dir, task_runner)


@flow(name="b12-backfill", log_prints=False)
def backfill_flow(
    start: dt.date, end: dt.date, out: str, rules_dir: str | None = None, chunk_days: int | None = None
) -> dict:
    """Re-evaluate history rows with service_date in [start, end]; replace those dates' partitions."""
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
    futures = [
        backfill_chunk.submit(out, [d.isoformat() for d in chunk], rules_dir, plan.run_id) for chunk in plan.chunks
    ]
    chunk_paths = [f.result() for f in futures]
    context = FlowRunContext.get()
    runner = type(context.task_runner).__name__ if context else "none"
    worklog = backfill_worklog(out, plan)
    manifest = backfill_record(out, plan, chunk_paths, started_at, rules_dir, runner, worklog)
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
    """Run the backfill flow on the chosen task runner. Default chunking: the look-back length on the
    local thread pool (Polars already uses every core), 7 days on Dask (chunks are its parallelism)."""
    from b12pipeline.runguard import guard_output

    if chunk_days is None and (dask_address or workers):
        chunk_days = DASK_CHUNK_DAYS
    target = backfill_flow.with_options(task_runner=task_runner(dask_address, workers))
    with guard_output(out):  # one run per output root, owner-only files (b12pipeline/runguard.py)
        return target(start=start, end=end, out=out, rules_dir=rules_dir, chunk_days=chunk_days)
