"""The nightly flow: stage each extract (ingest, validate, quarantine), apply the night, record it.

Thin by design: tasks pass file paths and counts, never frames; all logic is in b12pipeline.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

import b12pipeline  # noqa: F401  (telemetry defaults before prefect is imported)
from b12pipeline import deployments, pipeline, progress, report
from b12pipeline.archive import commit_night, copy_for_night
from b12pipeline.files import extract_checksum, file_state
from b12pipeline.paths import OutputLayout
from b12pipeline.runguard import guard_output, note_run

# A full disk, a quota, a read-only file system or a file another run took does not come right in
# the seconds between retries: the night stops at once with its one line, and the re-run (safe,
# idempotent) follows the fix.
_LASTING_IO_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.ENOENT})


def _retry_on_io(task, task_run, state) -> bool:
    """Retry transient I/O failures (network shares, locked files), never data or code errors."""
    try:
        state.result()
    except OSError as exc:
        return exc.errno not in _LASTING_IO_ERRORS
    except Exception:
        return False
    return False


@task(name="stage-extract", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_on_io)
def stage_extract(
    path: str,
    out: str,
    run_id: str,
    night: dt.date,
    rules_dir: str | None,
    source: str | None,
    sha256: str | None = None,
    listed: list[int] | None = None,
) -> dict:
    rules = pipeline.Rules.load(rules_dir)
    result = pipeline.stage_file(path, out, run_id, night, rules, source=source, sha256=sha256, listed=listed)
    return result.to_dict()


@task(name="archive-extracts", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_on_io)
def archive_extracts(paths: list[str], inputs: list[dict], out: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The processed files' bytes into the archive, verified against their checksums and not yet
    recorded (archive.copy_for_night): the `(copy, sha256)` pairs commit-night records, and the
    problems of files that changed since they were read."""
    processed = [(Path(p), i["sha256"]) for p, i in zip(paths, inputs, strict=True) if i["status"] == "processed"]
    copies, problems = copy_for_night(OutputLayout(Path(out)).archive, processed)
    return [(str(copy), sha) for copy, sha in copies], problems


@task(name="commit-night", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_on_io)
def commit(
    paths: list[str],
    inputs: list[dict],
    out: str,
    night: dt.date,
    run_id: str,
    from_landing: bool,
    copies: list[tuple[str, str]],
) -> None:
    """The night's last step: record the archived copies (archive-extracts) and the rejected files in
    the archive index (one append), then take rejected files out of the landing folder.

    `nightly` skips recorded checksums, so recording any earlier would let a run killed before its
    manifest, report or a rejection was written leave that night unfinished for good; recorded
    last, a re-run after a kill at any point redoes the same night with the same result."""
    rejected = [(i["rejected_as"], i["sha256"]) for i in inputs if i["status"] == "rejected"]
    archived = [(Path(copy), sha) for copy, sha in copies]
    commit_night(OutputLayout(Path(out)).archive, night.isoformat(), run_id, archived, rejected)
    if from_landing:  # their bytes are in rejected/ (a symbolic link: only the link is removed)
        for path, result in zip(paths, inputs, strict=True):
            if result["status"] == "rejected":
                Path(path).unlink(missing_ok=True)


@task(name="apply-night", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_on_io)
def apply_night(staged: list[str], out: str, rules_dir: str | None, run_id: str, engine: str = "polars") -> dict:
    return pipeline.apply_staged(staged, out, pipeline.Rules.load(rules_dir), run_id, engine)


@task(name="update-worklog", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_on_io)
def update_worklog(out: str, night: dt.date, run_id: str, dates: list[str]) -> dict:
    """The findings' lifecycle (new / open / resolved / reopened) in the coders' worklog: counts only."""
    from b12pipeline.worklog import update_night_from_queues

    return update_night_from_queues(out, night, run_id, dates)


@task(name="write-run-record", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_on_io)
def write_run_record(
    run_id: str,
    night: dt.date,
    started_at: str,
    inputs: list[dict],
    applied: dict,
    out: str,
    rules_dir: str | None,
    ruleset_version: str,
    ignored: list[dict],
) -> dict:
    pipeline.cleanup_staging(out, run_id)
    ended_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return report.build_manifest(
        run_id=run_id,
        kind="night",
        night=night.isoformat(),
        started_at=started_at,
        ended_at=ended_at,
        inputs=inputs,
        applied=applied,
        out=Path(out),
        ruleset_version=ruleset_version,
        rules_dir=rules_dir or "",
        ignored=ignored,
    )


@task(name="write-run-report", retries=1, retry_delay_seconds=[5], retry_condition_fn=_retry_on_io)
def write_run_report(run_id: str, out: str, started_at: str) -> str:
    """Data Docs from the night's saved GX results, then report.html (which links them): counts only."""
    from b12pipeline.datadocs import build_data_docs
    from b12pipeline.report_html import write_run_report as write_html

    build_data_docs(out, run_id, dt.datetime.fromisoformat(started_at))
    return str(write_html(out, run_id))


@flow(name="b12-nightly", log_prints=False)
def nightly_flow(
    extracts: list[str],
    out: str,
    night: dt.date,
    rules_dir: str | None = None,
    source: str | None = None,
    move_rejected: bool = False,
    engine: str = "polars",
    ignored: list[dict] | None = None,
) -> dict:
    """Process `extracts` as one night. `night` is passed in: nothing below reads the wall clock.

    `move_rejected`: the extracts come from a landing folder; rejected ones leave it once the night
    is recorded. `ignored`: landing entries not read, with the rule (listed in the manifest)."""
    with guard_output(out):  # one run per output root, owner-only files (a no-op inside the CLI's guard)
        return _nightly(extracts, out, night, rules_dir, source, move_rejected, engine, ignored or [])


def _nightly(
    extracts: list[str],
    out: str,
    night: dt.date,
    rules_dir: str | None,
    source: str | None,
    move_rejected: bool,
    engine: str,
    ignored: list[dict],
) -> dict:
    logger = get_run_logger()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    # The output root's deployed ruleset, never a folder that differs from it (b12pipeline/deployments.py).
    rules_dir = str(deployments.resolve_rules(out, rules_dir, started_at, deployments.operator_name()))
    rules = pipeline.Rules.load(rules_dir)
    # Listed before hashing: a file that changes after this is not staged (still being written).
    listed = [file_state(Path(p)) if os.path.lexists(p) and not Path(p).is_dir() else None for p in extracts]
    checksums = [extract_checksum(Path(p)) for p in extracts]
    run_id = pipeline.make_run_id(night, checksums, rules.ruleset.version)
    note_run(out, run_id)
    logger.info("run %s: %d extract(s), ruleset %s", run_id, len(extracts), rules.ruleset.version)
    progress.step(f"run {run_id}: {len(extracts)} extract(s)")
    futures = [
        stage_extract.submit(p, out, run_id, night, rules_dir, source, sha, state)
        for p, sha, state in zip(extracts, checksums, listed, strict=True)
    ]
    inputs = [f.result() for f in futures]
    for i in inputs:
        if i["status"] in ("rejected", "deferred"):
            logger.warning("%s %s", i["status"], i["error"], extra=progress.SAID_IN_SUMMARY)
        else:
            logger.info(
                "%s: %d rows read, %d in scope, %d quarantined",
                i["file"],
                i["rows_read"],
                i["in_scope"],
                i["quarantined"],
            )
    applied = apply_night([i["staged"] for i in inputs if i["staged"]], out, rules_dir, run_id, engine)
    # Bytes only, recorded by commit-night: copied on a core the worklog's update leaves idle.
    archiving = archive_extracts.submit(extracts, inputs, out)
    applied["worklog"] = update_worklog(out, night, run_id, applied["dates"])
    manifest = write_run_record(
        run_id, night, started_at, inputs, applied, out, rules_dir, rules.ruleset.version, ignored
    )
    progress.step("run record written; writing the run report")
    # The queues and run record are complete; a broken report must not fail the night for coders.
    report_state = write_run_report(run_id, out, started_at, return_state=True)
    if report_state.is_failed():
        logger.error("run report not written for %s: %s", run_id, report_state.message)
    copies, problems = archiving.result()
    commit(extracts, inputs, out, night, run_id, move_rejected, copies)
    for problem in problems:
        logger.warning("not archived (read again next night): %s", problem)
    create_markdown_artifact(
        key="b12-nightly-summary",
        markdown=report.summary_markdown(manifest),
        description="Counts only: no patient identifiers.",
    )
    create_table_artifact(
        key="b12-nightly-findings-per-rule",
        table=report.counts_table(manifest),
        description="Findings per rule for the dates this run evaluated.",
    )
    return manifest


@flow(name="b12-nightly-landing", log_prints=False)
def landing_flow(
    landing: str,
    out: str,
    night: dt.date | None = None,
    tz: str = "UTC",
    rules_dir: str | None = None,
    source: str | None = None,
    engine: str = "polars",
) -> dict:
    """What the schedule (and `b12pipeline nightly`) runs: every new file in `landing` (by checksum)
    as one night; rejected files are moved out of the landing folder.

    `night` defaults to the date of this run's *scheduled* start in `tz` (see b12pipeline.schedule),
    so a late or re-run schedule slot still processes its own night.
    """
    from prefect.runtime import flow_run

    from b12pipeline.archive import scan_landing
    from b12pipeline.schedule import night_of

    logger = get_run_logger()
    night = night or night_of(flow_run.scheduled_start_time, tz)
    with guard_output(out):  # held from the archive lookup to the end of the night
        scan = scan_landing(Path(landing), OutputLayout(Path(out)).archive)
        already = len(scan.processed)
        progress.step(f"{len(scan.new)} new file(s) in the landing folder, {already} already processed")
        for entry in scan.ignored:
            logger.info("ignored %s: %s", entry["file"], entry["reason"])
        for path in scan.rejected_before:  # a run killed after recording the night, before this step
            path.unlink(missing_ok=True)
        if not scan.new:
            logger.info("night %s: nothing new in landing (%d file(s) already processed)", night, already)
            return {
                "night": night.isoformat(),
                "run_id": None,
                "status": "nothing new",
                "files": 0,
                "already_processed": already,
                "ignored": scan.ignored,
                "checksums": scan.checksums,
            }
        manifest = nightly_flow(
            extracts=[str(p) for p in scan.new],
            out=out,
            night=night,
            rules_dir=rules_dir,
            source=source,
            move_rejected=True,
            engine=engine,
            ignored=scan.ignored,
        )
    return {
        "night": night.isoformat(),
        "run_id": manifest["run_id"],
        "status": "processed",
        "files": manifest["totals"]["files"],
        "files_rejected": manifest["totals"]["files_rejected"],
        "already_processed": already,
        "manifest": manifest,  # counts and file names only, as the run record itself
        "checksums": scan.checksums,  # file name -> SHA-256, as scanned: a caller need not hash again
    }


def landing_deployment(landing: str, out: str, cron: str, tz: str, name: str = "nightly", rules_dir: str | None = None):
    """The scheduled deployment of `landing_flow` (what `b12pipeline serve` serves)."""
    from prefect.schedules import Cron

    from b12pipeline.schedule import check_timezone

    check_timezone(tz)
    return landing_flow.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=tz)],
        parameters={"landing": landing, "out": out, "tz": tz, "rules_dir": rules_dir},
        description=f"Every new extract in {landing} as one night, on '{cron}' ({tz}).",
    )
