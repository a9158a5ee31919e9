"""The night, as plain library functions on paths (the Prefect flows only orchestrate these).

stage_file     ingest one extract -> scope -> validate; writes quarantine and the staged valid rows
apply_staged   merges staged rows into history, re-evaluates every touched date, writes the queues
evaluate_dates re-evaluates given dates from history (shared by nights and history re-runs)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from b12pipeline import normalize, progress
from b12pipeline.config import load_site_config
from b12pipeline.datadocs import validation_result_path
from b12pipeline.engine.engines import evaluator
from b12pipeline.engine.evaluate import empty_findings
from b12pipeline.engine.rulefile import Ruleset
from b12pipeline.engine.settings import SiteConfig
from b12pipeline.facts import evaluation_facts
from b12pipeline.files import copy_no_follow, extract_checksum, file_state, write_json, write_text_atomic
from b12pipeline.history import (
    earlier_versions,
    history_paths,
    merge_into_history,
    patients_of,
    read_for_dates,
    stage_rows,
    staged_keys,
)
from b12pipeline.ingest import FileRejected
from b12pipeline.ingest.read import read_extract
from b12pipeline.paths import OutputLayout
from b12pipeline.queues import write_quarantine, write_queue_partitions
from b12pipeline.reference import Reference, load_reference
from b12pipeline.rulesets import check_conditions_compile, load_ruleset
from b12pipeline.validate import service_date_window, validate


@dataclass
class Rules:
    """Everything that decides findings, loaded once per run."""

    ruleset: Ruleset
    config: SiteConfig
    reference: Reference

    @classmethod
    def load(cls, rules_dir: Path | str | None = None) -> "Rules":
        directory = Path(rules_dir) if rules_dir else None
        ruleset = load_ruleset(directory)
        reference = load_reference(ruleset.directory / "reference")
        config = load_site_config(ruleset.directory / "site.yaml")
        check_conditions_compile(ruleset, config)  # before any file is read or history changed
        return cls(
            # Findings carry the versions of the reference tables their rule used.
            ruleset=dataclasses.replace(ruleset, reference_versions=reference.versions),
            config=config,
            reference=reference,
        )


@dataclass
class StageResult:
    """Counts and paths for one input file: no row values, so it is safe for logs and artifacts."""

    file: str
    sha256: str
    status: str = "processed"  # processed | rejected | deferred (changed while read: next night)
    error: str = ""
    source_format: str = ""
    rows_read: int = 0
    in_scope: int = 0
    out_of_scope: int = 0
    quarantined: int = 0
    staged: str = ""  # folder of the valid canonical B12 rows, one Parquet per service date ("" when none)
    superseded_in_file: int = 0  # in-scope rows a later row of the same admin_id in this file replaces
    rejected_as: str = ""  # its name in rejected/ (rejected files only)
    unexpected_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def file_key(path: Path, sha256: str) -> str:
    """`<stem>-<sha[:12]>` for the files a night writes per input (staging, quarantine, validation
    results). Only [A-Za-z0-9._-] are kept: readers take `[`, `*` and `?` in a path as a pattern."""
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', path.stem)}-{sha256[:12]}"


def rejected_name(path: Path, sha256: str) -> str:
    """`<stem>-<sha[:12]><suffix>`: a later file of the same name never overwrites an earlier one."""
    return f"{path.stem}-{sha256[:12]}{path.suffix}" if sha256 else path.name


def reject_file(path: Path, layout: OutputLayout, reason: str, sha256: str) -> str:
    """Keep a copy of the file's bytes in rejected/ with `<name>.error.txt` beside it; return the name.

    Always a copy: `nightly` removes the landing file only once the night is recorded
    (flows/nightly.py), so a run killed in between rejects it again. A symbolic link is never
    followed: only the error file is written (the link's target is not ours to copy or change)."""
    layout.rejected.mkdir(parents=True, exist_ok=True)
    name = rejected_name(path, sha256)
    target = layout.rejected / name
    if sha256 and not path.is_symlink() and path.exists():
        tmp = layout.rejected / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            if path.is_dir():  # a Bulk Data export is a folder; links inside it are copied as links
                shutil.copytree(path, tmp, symlinks=True, copy_function=shutil.copyfile)
            else:
                copy_no_follow(path, tmp)
            if target.is_dir():
                shutil.rmtree(target)
            tmp.replace(target)  # created under the run's umask: owner-only, whatever the source's mode
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            tmp.unlink(missing_ok=True)
    write_text_atomic(layout.rejected / f"{name}.error.txt", f"{path.name}: {reason}\n")
    return name


def stage_file(
    path: Path | str,
    out: Path | str,
    run_id: str,
    night: dt.date,
    rules: Rules,
    source: str | None = None,
    sha256: str | None = None,
    listed: list[int] | None = None,
) -> StageResult:
    """`sha256`: the file's checksum when the caller already has it (the flow hashes every input
    once for the run id; hashing a large extract again costs a full read). `listed`: its
    `file_state` when it was hashed; a file that has changed since is not staged (still being
    written: its last row may be torn) and is read again next night."""
    path, layout = Path(path), OutputLayout(Path(out))
    if not path.exists() and not path.is_symlink():  # the machine's problem, not the file's (exit 4)
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    result = StageResult(file=path.name, sha256=sha256 if sha256 is not None else extract_checksum(path))
    try:
        # Only B12 rows are read in (CSV/Parquet stream past the rest): scope is decided on raw
        # text (NDC, RxNorm, name), so nothing that could fail to parse decides it.
        scope = normalize.b12_scope(rules.reference)
        extract = read_extract(path, source, keep=scope, time_zone=rules.config.time_zone)
        progress.step(f"read {path.name}: {extract.rows:,} rows, {extract.frame.height:,} B12")
        result.source_format = extract.source_format
        b12 = extract.frame
        result.rows_read = extract.rows  # includes rows skipped as out of scope and reader-quarantined rows
        held = extract.quarantine_in_scope(scope)
        window = service_date_window(night, rules.config)
        outcome = validate(b12, service_dates=window).with_reader_quarantine(held)
        result.out_of_scope = extract.rows - outcome.rows
        progress.step(
            f"validated {path.name}: {outcome.valid.height:,} valid, {outcome.quarantine.height:,} quarantined"
        )
        result.unexpected_counts = outcome.unexpected_counts
        if outcome.gx_result is not None:  # for the run's Data Docs (counts only, see validate.py)
            write_json(validation_result_path(layout, run_id, file_key(path, result.sha256)), outcome.gx_result)
        share = outcome.quarantine.height / outcome.rows if outcome.rows else 0.0
        if share > rules.config.max_quarantine_share:
            raise FileRejected(
                path,
                f"{outcome.quarantine.height} of {outcome.rows} B12 rows failed validation "
                f"({share:.0%} > max_quarantine_share {rules.config.max_quarantine_share:.0%}); "
                f"most common: {_top_failures(outcome.unexpected_counts)}",
            )
    except FileRejected as exc:
        result.rejected_as = reject_file(path, layout, exc.reason, result.sha256)
        result.status, result.error = "rejected", str(exc)
        # A rejected file counts no rows (docs/reliability.md): it is kept whole in rejected/.
        result.rows_read = result.in_scope = result.out_of_scope = result.quarantined = 0
        progress.step(f"rejected {path.name}")
        return result
    if listed is not None and path.exists() and not path.is_dir() and file_state(path) != list(listed):
        result.status = "deferred"
        result.error = (
            f"{path}: changed while it was being read (still being written?); not staged, read again next night"
        )
        result.rows_read = result.in_scope = result.out_of_scope = result.quarantined = 0
        progress.step(f"deferred {path.name}: still changing")
        return result
    key = file_key(path, result.sha256)
    result.quarantined = write_quarantine(outcome.quarantine, layout.quarantine, key, night, run_id)
    result.in_scope = outcome.valid.height
    if outcome.valid.height:
        staged = layout.staging / run_id / key  # one file per service date, removed with the run
        result.superseded_in_file = outcome.valid.height - stage_rows(outcome.valid, staged)
        result.staged = str(staged)
    return result


def _top_failures(counts: dict[str, int]) -> str:
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{name} x{n}" for name, n in top) or "none"


def lookback_days(cfg: SiteConfig) -> int:
    """How far back cross-row rules look from a date of service."""
    return max(cfg.frequency_lookback_days, cfg.frequency_window_days, 1)


def evaluate_dates(
    out: Path | str,
    dates: list[dt.date],
    rules: Rules,
    run_id: str,
    engine: str = "polars",
    patients: pl.Series | None = None,
) -> dict[str, int]:
    """Re-evaluate the history rows of `dates` and replace those dates' queue partitions (only
    `patients`' findings in them when given; the other patients' findings stay as they are).

    `engine` is "polars" (default) or "durable" (the optional second engine, same findings)."""
    dates = sorted(set(dates))
    if not dates:
        return {}
    findings = findings_for_dates(out, dates, rules, run_id, engine, patients)
    return write_queue_partitions(findings, OutputLayout(Path(out)).queues, dates, patients)


def findings_for_dates(
    out: Path | str,
    dates: list[dt.date],
    rules: Rules,
    run_id: str,
    engine: str = "polars",
    patients: pl.Series | None = None,
) -> pl.DataFrame:
    """Findings of the history rows of `dates` (of `patients` only, when given), each as of its own DOS.

    Only those rows and their patients' earlier rows within the look-back are read (history.py
    read_for_dates): cross-row facts are per patient and only look backwards."""
    dates = sorted(set(dates))
    if not dates:
        return empty_findings()
    history = OutputLayout(Path(out)).history
    # Earlier dates' rows only feed cross-row facts: only the columns those derive from are read.
    canonical = read_for_dates(history, dates, lookback_days(rules.config), patients, normalize.CROSS_ROW_SOURCES)
    if canonical is None:
        return empty_findings()
    findings = _findings_by_patient_group(canonical, dates, rules, run_id, engine)
    if patients is not None:
        findings = findings.filter(pl.col("patient_id").is_in(patients.unique().implode()))
    return findings


def dependent_dates(history_root: Path, changed: list[dt.date], cfg: SiteConfig) -> list[dt.date]:
    """History dates after a changed date and within its look-back reach: their cross-row facts
    (FREQ-001, DUP-001) may change when an earlier date gains, loses or moves a row."""
    if not changed:
        return []
    reach = dt.timedelta(days=lookback_days(cfg))
    changed_set = set(changed)
    return sorted(
        d for d in history_paths(history_root) if d not in changed_set and any(c < d <= c + reach for c in changed)
    )


# History rows evaluated at once. Facts take about twice the memory of the rows they come from;
# a year of history in one piece held all of it at the same time.
EVALUATE_ROWS = 125_000
# Groups evaluated at once (each holds its own facts: peak memory grows by one group's).
EVALUATORS = 2


def _findings_by_patient_group(
    canonical: pl.DataFrame, dates: list[dt.date], rules: Rules, run_id: str, engine: str = "polars"
) -> pl.DataFrame:
    """_findings in groups of whole patients of at most ~EVALUATE_ROWS rows, EVALUATORS groups at a
    time, each group's facts let go when it is done: every fact is of one row or of one patient's
    rows (crossrow.py, normalize.py's units per patient and day), so the findings are the same as in
    one piece; the engine's order (date, queue, rule, admin) is restored across the groups."""
    # History is read as a piece per date file: a group's columns are made one block first (the
    # facts' joins and selects on 120 pieces cost more than the copy: 291 -> 221 ms a group of 125k).
    groups = -(-canonical.height // EVALUATE_ROWS)
    if groups <= 1:
        return _findings(canonical.rechunk(), dates, rules, run_id, engine)
    group = canonical["patient_id"].hash(seed=0) % groups  # a row's group is its patient's (nulls: one)
    # Two groups at once keep both cores busy through the facts' many small steps; durable-rules
    # holds one process-wide engine (not safe to share between threads), so it takes them in turn.
    with ThreadPoolExecutor(max_workers=EVALUATORS if engine == "polars" else 1) as pool:
        parts = list(
            pool.map(
                lambda i: _findings(canonical.filter(group == i).rechunk(), dates, rules, run_id, engine), range(groups)
            )
        )
    return pl.concat(parts).sort("service_date", "queue", "rule_id", "admin_id")


def _findings(
    canonical: pl.DataFrame, dates: list[dt.date], rules: Rules, run_id: str, engine: str = "polars"
) -> pl.DataFrame:
    facts = evaluation_facts(canonical, rules.reference, rules.config, rules.ruleset.payers)
    targets = facts.filter(pl.col("service_date").is_in(dates))
    return evaluator(engine)(targets, rules.ruleset, rules.config, run_id)


def apply_staged(staged: list[str], out: Path | str, rules: Rules, run_id: str, engine: str = "polars") -> dict:
    """Merge the night's staged rows into history and re-evaluate every date they touched."""
    layout = OutputLayout(Path(out))
    folders = [Path(p) for p in staged if p]
    # Only the staged rows' keys are read here: each date's rows are read (or linked) as it is merged.
    keys = staged_keys(folders)
    earlier = earlier_versions(layout.history, keys)
    touched = merge_into_history(layout.history, folders, keys, earlier)
    merged = keys.height
    # A late row or a correction on an earlier date changes what later dates see as their history:
    # re-evaluate those too, so nights and a history re-run agree (docs/history.md). On those later
    # dates only the changed patients' findings can differ (cross-row facts are per patient): the
    # night's, and those of rows a correction supersedes (a sort of every patient id of the night,
    # skipped when no later date is affected).
    later = dependent_dates(layout.history, touched, rules.config)
    changed = patients_of(layout.history, keys, earlier) if later else None
    del keys, earlier
    progress.step(
        f"history: {merged:,} rows merged, {len(touched):,} date(s) to "
        f"evaluate, {len(later):,} later date(s) for their patients"
    )
    per_queue = evaluate_dates(out, touched, rules, run_id, engine)
    for queue, n in evaluate_dates(out, later, rules, run_id, engine, changed).items():
        per_queue[queue] = per_queue.get(queue, 0) + n
    touched = sorted(set(touched) | set(later))
    progress.step(f"evaluated {len(touched):,} date(s): {sum(per_queue.values()):,} findings")
    return {"dates": [d.isoformat() for d in touched], "findings_per_queue": per_queue}


def cleanup_staging(out: Path | str, run_id: str) -> None:
    shutil.rmtree(OutputLayout(Path(out)).staging / run_id, ignore_errors=True)


def make_run_id(night: dt.date, checksums: list[str], ruleset_version: str, kind: str = "night") -> str:
    """Deterministic: the same inputs and rules give the same run id, so re-runs are byte-identical."""
    digest = hashlib.sha256("\n".join(sorted(checksums) + [ruleset_version, kind]).encode()).hexdigest()[:10]
    return f"{kind}-{night.isoformat()}-{digest}"
