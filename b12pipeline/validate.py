"""Validate: run the Great Expectations suite on B12 rows; split valid rows from quarantine.

Every expectation of the suite (and every check below) reads one column, and its verdict on a row
depends only on that row's cell. So each column is validated once per distinct value: GX runs the
column's expectations on the column's distinct values (a 1M-row extract has 4 HCPCS codes, not 1M),
and a row fails where its cell is one of the failing values. A column whose checks read only
presence and length (admin_id, patient_id, encounter_id) is validated on one value per length
(value_key).
GX is the authority on whether each expectation holds and on how many values break it. It runs in
BASIC mode (counts only); the failing values are then found by evaluating the same expectation in
Polars, and the two counts must agree.

When they do not (the two regex engines read a pattern differently for some text), one odd cell
must not stop the night: GX is asked again for that expectation alone, with its failing value
indices, and every value either checker fails sends its rows to quarantine; a row they disagree on
carries both verdicts in its reason. The suite uses ASCII classes ([0-9], not \\d) so the engines agree.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import polars as pl

from b12pipeline import normalize
from b12pipeline.engine.settings import SiteConfig
from b12pipeline.ingest.canonical import scrub
from b12pipeline.paths import suite_file

RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}

# Checks GX cannot express on text (a regex cannot know February has no 30th): same value-mask
# form, applied only where the column passed its GX expectations (one reason per problem).
CALENDAR_CHECKS = {
    "b12_admin_time_is_a_calendar_time(admin_time)": (
        "admin_time",
        lambda: pl.col("admin_time").is_not_null() & normalize.local_timestamp().is_null(),
        "admin_time is not a real calendar date and time",
    ),
    "b12_expiration_date_is_a_calendar_date(expiration_date)": (
        "expiration_date",
        lambda: pl.col("expiration_date").is_not_null() & normalize.expiry_date().is_null(),
        "expiration_date is not a real calendar date",
    ),
}
SERVICE_DATE_COLUMN = "admin_time"
SERVICE_DATE_CHECK = f"b12_service_date_in_plausible_window({SERVICE_DATE_COLUMN})"


class SuiteError(RuntimeError):
    """The expectation suite is unusable (GX dropped an expectation, or an unsupported type)."""


@dataclass
class ValidationOutcome:
    valid: pl.DataFrame
    quarantine: pl.DataFrame  # canonical columns + failed_expectations + failure_reasons
    unexpected_counts: dict[str, int] = field(default_factory=dict)  # rows per check: no values
    gx_result: dict | None = None  # GX's results (counts, no values) and row counts, for the validation pages

    @property
    def rows(self) -> int:
        return self.valid.height + self.quarantine.height

    def with_reader_quarantine(self, held: pl.DataFrame | None) -> "ValidationOutcome":
        """Add rows a reader quarantined before validation (an unknown source code, an invalid
        FHIR line): they carry their own failed_expectations and failure_reasons."""
        if held is None or held.height == 0:
            return self
        counts = dict(self.unexpected_counts)
        for name, n in held["failed_expectations"].explode().value_counts().iter_rows():
            counts[name] = counts.get(name, 0) + n
        quarantine = pl.concat([self.quarantine, held.select(self.quarantine.columns)], how="vertical_relaxed")
        return ValidationOutcome(
            valid=self.valid,
            quarantine=quarantine.sort("source_row"),
            unexpected_counts=counts,
            gx_result=self.gx_result,
        )


def expectation_name(config: dict) -> str:
    return f"{config['type']}({config['kwargs'].get('column', '')})"


def polars_mask(config: dict) -> pl.Expr:
    """Values that break one expectation, the way GX counts them (map expectations skip nulls)."""
    kind, kw = config["type"], config["kwargs"]
    col = pl.col(kw["column"])
    if kind == "expect_column_values_to_not_be_null":
        return col.is_null()
    if kind == "expect_column_values_to_match_regex":
        return col.is_not_null() & ~col.str.contains(kw["regex"])
    if kind == "expect_column_values_to_be_in_set":
        return col.is_not_null() & ~col.is_in(list(kw["value_set"]))
    if kind == "expect_column_value_lengths_to_be_between":
        n = col.str.len_chars()
        return col.is_not_null() & ~n.is_between(kw.get("min_value", 0), kw.get("max_value", 10**9))
    raise SuiteError(f"expectation type {kind} has no row-mask translation; add one in validate.py")


def suite_columns(spec: dict) -> list[str]:
    """The columns a suite reads, in the suite's order."""
    return list(dict.fromkeys(e["kwargs"]["column"] for e in spec["expectations"]))


class SuiteRunner:
    """One ephemeral GX context and datasource per suite file, and the suite split by column."""

    def __init__(self, suite_path: Path):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        # GX announces its temporary docs folders at INFO (and pins that module's level to INFO);
        # keep the run log to what matters.
        for name in ("great_expectations", "great_expectations.data_context.types.base"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.path = suite_path
        self.spec = json.loads(suite_path.read_text())
        for exp in self.spec["expectations"]:
            if "column" not in exp["kwargs"]:
                raise SuiteError(f"{suite_path}: {exp['type']} reads no single column; each check must read one")
            polars_mask(exp)  # refuse an expectation we cannot turn into exact value masks
        self.context = gx.get_context(mode="ephemeral")
        self.context.enable_analytics(False)  # no usage telemetry from a process that holds PHI
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        suite = gx.ExpectationSuite(**self.spec)
        # GX logs and drops an expectation it cannot build (a misspelled type) instead of raising.
        if len(suite.expectations) != len(self.spec["expectations"]):
            kept = {e.expectation_type for e in suite.expectations}
            dropped = [e["type"] for e in self.spec["expectations"] if e["type"] not in kept]
            raise SuiteError(
                f"{suite_path}: GX loaded {len(suite.expectations)} of "
                f"{len(self.spec['expectations'])} expectations; dropped: {', '.join(dropped) or '?'}"
            )
        self.suite = self.context.suites.add(suite)
        self.column_suites = {
            column: gx.ExpectationSuite(
                name=f"{self.spec['name']}[{column}]",
                expectations=[e for e in self.spec["expectations"] if e["kwargs"]["column"] == column],
            )
            for column in self.columns
        }
        self.batch_definition = (
            self.context.data_sources.add_pandas(name="extract")
            .add_dataframe_asset(name="b12_values")
            .add_batch_definition_whole_dataframe("whole_frame")
        )
        self._lock = threading.Lock()

    @property
    def columns(self) -> list[str]:
        return suite_columns(self.spec)

    def run(self, values: dict[str, pl.DataFrame]) -> tuple[dict[str, int], dict]:
        """GX on each column's distinct values: failing values per expectation, and the results as
        JSON (counts of values, no value itself) in the suite's order.

        partial_unexpected_count 0: GX would otherwise keep up to 20 failing values per expectation
        (patient and admin ids among them); counts are all we need, and all we keep."""
        by_name: dict[str, dict] = {}
        for column, suite in self.column_suites.items():
            batch = values[column].to_pandas()
            with self._lock:
                result = self.batch_definition.get_batch(batch_parameters={"dataframe": batch}).validate(
                    suite, result_format=RESULT_FORMAT
                )
            for r in result.results:
                cfg = r.expectation_config
                if cfg is None:  # GX returns each result with its expectation; without it nothing names the count
                    raise SuiteError(f"{self.path}: GX returned a validation result without its expectation")
                name = f"{cfg.type}({cfg.kwargs.get('column', '')})"
                if r.exception_info and r.exception_info.get("raised_exception"):
                    # GX passes on the underlying error's text, which can quote the cell it failed on
                    why = scrub(Exception(r.exception_info.get("exception_message") or "an exception"))
                    raise SuiteError(f"{self.path}: {name} raised in GX: {why}")
                by_name[name] = r.to_json_dict()
        ordered = [by_name[expectation_name(e)] for e in self.spec["expectations"]]
        passed = sum(1 for r in ordered if r.get("success"))
        combined = {
            "suite_name": self.spec["name"],
            "success": passed == len(ordered),
            "statistics": {
                "evaluated_expectations": len(ordered),
                "successful_expectations": passed,
                "unsuccessful_expectations": len(ordered) - passed,
                "success_percent": 100.0 * passed / len(ordered) if ordered else 100.0,
            },
            "results": ordered,
        }
        counts = {name: int((r.get("result") or {}).get("unexpected_count") or 0) for name, r in by_name.items()}
        return counts, combined

    def failing_values(self, values: pl.DataFrame, name: str) -> pl.Series:
        """GX's own verdicts for one expectation on a column's values (True = fails), for the rare
        case where its count and the Polars mask disagree. COMPLETE lists values too: only the
        indices are kept."""
        import great_expectations as gx

        spec = next(e for e in self.spec["expectations"] if expectation_name(e) == name)
        suite = gx.ExpectationSuite(name=f"{self.spec['name']}-recheck", expectations=[spec])
        expectation = suite.expectations[0]
        with self._lock:
            result = self.batch_definition.get_batch(batch_parameters={"dataframe": values.to_pandas()}).validate(
                expectation, result_format={"result_format": "COMPLETE"}
            )
        mask = [False] * values.height
        for i in result.result.get("unexpected_index_list") or []:
            mask[int(i)] = True
        return pl.Series(name, mask, dtype=pl.Boolean)


class Runner(Protocol):
    """What validation asks of a suite's runner: SuiteRunner here, or GX's own process (gx_process)."""

    spec: dict

    @property
    def columns(self) -> list[str]: ...

    def run(self, values: dict[str, pl.DataFrame]) -> tuple[dict[str, int], dict]: ...

    def failing_values(self, values: pl.DataFrame, name: str) -> pl.Series: ...


_building = threading.Lock()
_served: dict[Path, Runner] = {}


@contextmanager
def served_by(runner: Runner, suite_path: Path | None = None) -> Iterator[None]:
    """While the block runs, suite_runner hands out `runner` for the suite (GX's own process,
    b12pipeline/gx_process.py) instead of building GX in this process."""
    path = suite_file(suite_path)
    with _building:
        _served[path] = runner
    try:
        yield
    finally:
        with _building:
            _served.pop(path, None)


def suite_runner(suite_path: Path | None = None) -> Runner:
    """The suite's runner, built once per process (GX's import and context take seconds): a caller
    waits while another thread builds it. The runner served_by hands out while it does."""
    with _building:
        path = suite_file(suite_path)
        return _served[path] if path in _served else _suite_runner(path)


@lru_cache(maxsize=4)
def _suite_runner(suite_path: Path) -> SuiteRunner:
    return SuiteRunner(suite_path)


def service_date_window(night: dt.date, config: SiteConfig) -> tuple[dt.date, dt.date]:
    """The plausible dates of service for a night's rows (site settings earliest_service_date and
    service_date_max_days_after_night): a year typed 1902 or 2204 is not a dose to bill."""
    return config.earliest_service_date, night + dt.timedelta(days=int(config.service_date_max_days_after_night))


@dataclass
class _Check:
    name: str
    column: str
    reason: str
    fails: pl.Series  # the verdict on each of the column's distinct values (True = fails)


def _fails(values: pl.DataFrame, mask: pl.Expr) -> pl.Series:
    return values.select(mask.fill_null(False)).to_series()


def _checks(
    runner: Runner, values: dict[str, pl.DataFrame], service_dates: tuple[dt.date, dt.date] | None
) -> tuple[list[_Check], dict]:
    """Every check's verdict on every distinct value, in the order reasons are listed: the suite's
    expectations, the calendar checks, the service-date window, then any validator disagreement."""
    gx_counts, gx_result = runner.run(values)
    checks = [
        _Check(
            expectation_name(e),
            e["kwargs"]["column"],
            e.get("meta", {}).get("reason", expectation_name(e)),
            _fails(values[e["kwargs"]["column"]], polars_mask(e)),
        )
        for e in runner.spec["expectations"]
    ]

    def and_passed_earlier_checks(fails: pl.Series, column: str) -> pl.Series:
        """One reason per problem: a value an earlier check of its column failed is not failed again."""
        for earlier in [c.fails for c in checks if c.column == column]:
            fails = fails & ~earlier
        return fails

    for name, (column, mask, reason) in CALENDAR_CHECKS.items():
        checks.append(_Check(name, column, reason, and_passed_earlier_checks(_fails(values[column], mask()), column)))
    if service_dates is not None:
        first, last = service_dates
        day = normalize.local_timestamp().dt.date()
        outside = _fails(values[SERVICE_DATE_COLUMN], day.is_not_null() & ~day.is_between(first, last))
        # The window's ends are settings, not the row's value: the value itself is never quoted.
        reason = (
            f"admin_time: the date of service is outside the plausible window {first}..{last} "
            "(earliest_service_date .. the night + service_date_max_days_after_night)"
        )
        checks.append(
            _Check(
                SERVICE_DATE_CHECK,
                SERVICE_DATE_COLUMN,
                reason,
                and_passed_earlier_checks(outside, SERVICE_DATE_COLUMN),
            )
        )
    for name, gx_count in gx_counts.items():
        check = next(c for c in checks if c.name == name)
        if int(check.fails.sum()) == gx_count:
            continue
        ours, theirs = check.fails, runner.failing_values(values[check.column], name)
        check.fails = ours & theirs  # both say it fails
        for label, fails in (
            (f"validators_disagree({name}): GX fails, Polars passes", theirs & ~ours),
            (f"validators_disagree({name}): Polars fails, GX passes", ours & ~theirs),
        ):
            verdict = label.split(": ", 1)[1]
            checks.append(_Check(label, check.column, f"{check.reason} ({verdict}: held for review)", fails))
    return checks, gx_result


def _row_mask(check: _Check, values: pl.DataFrame, key: pl.Expr) -> pl.Expr | None:
    """The rows whose cell has the `key` of one of the check's failing values; None when no value fails."""
    failing = values.select(key).filter(check.fails).to_series()
    if failing.len() == 0:
        return None
    mask = key.is_in(failing.drop_nulls().implode()).fill_null(False)
    return mask | key.is_null() if failing.null_count() else mask


# Expectations whose verdict on a value follows from its length alone (null: no length).
LENGTH_ONLY = frozenset({"expect_column_values_to_not_be_null", "expect_column_value_lengths_to_be_between"})


def value_key(runner: Runner, frame: pl.DataFrame, column: str) -> pl.Expr:
    """What a row's verdict on `column` depends on: its cell, or only the cell's length when every
    check of the column reads no more (presence, length). Such a column is validated on one value
    per length: a million admin ids are a few lengths, and GX took ~1 s per million values."""
    kinds = {e["type"] for e in runner.spec["expectations"] if e["kwargs"]["column"] == column}
    value_checks = {c for c, _, _ in CALENDAR_CHECKS.values()} | {SERVICE_DATE_COLUMN}
    if kinds <= LENGTH_ONLY and column not in value_checks and frame.schema[column] == pl.String:
        return pl.col(column).str.len_chars()
    return pl.col(column)


def distinct_by_key(frame: pl.DataFrame, column: str, key: pl.Expr) -> pl.DataFrame:
    """One value of `column` per distinct `key` (the first in row order), as a one-column frame."""
    if key.meta.output_name() == column and key.meta.is_column():
        return frame.select(pl.col(column).unique())
    return frame.select(column, key.alias("_key")).unique("_key", keep="first", maintain_order=True).select(column)


def validate(
    frame: pl.DataFrame, suite_path: Path | None = None, service_dates: tuple[dt.date, dt.date] | None = None
) -> ValidationOutcome:
    """Split the canonical B12 rows of one file into valid rows and quarantine rows.

    `service_dates` (first, last): rows whose date of service (admin_time's local date as written)
    falls outside are quarantined too (service_date_window)."""
    runner = suite_runner(suite_path)
    no_quarantine = frame.clear().with_columns(
        pl.lit(None, dtype=pl.List(pl.String)).alias("failed_expectations"),
        pl.lit(None, dtype=pl.String).alias("failure_reasons"),
    )
    if frame.height == 0:
        return ValidationOutcome(valid=frame, quarantine=no_quarantine)
    keys = {column: value_key(runner, frame, column) for column in runner.columns}
    values = {column: distinct_by_key(frame, column, key) for column, key in keys.items()}
    checks, gx_result = _checks(runner, values, service_dates)
    masks = {i: m for i, c in enumerate(checks) if (m := _row_mask(c, values[c.column], keys[c.column])) is not None}
    gx_result["rows_checked"] = frame.height
    if not masks:
        gx_result["rows_failing"] = {}
        return ValidationOutcome(valid=frame, quarantine=no_quarantine, gx_result=gx_result)
    flags = frame.select([m.alias(f"_f{i}") for i, m in masks.items()])
    counts = {checks[i].name: int(flags[f"_f{i}"].sum()) for i in masks}
    gx_result["rows_failing"] = counts
    bad = flags.select(pl.any_horizontal(pl.all())).to_series()
    failed = pl.concat_list([pl.when(pl.col(f"_f{i}")).then(pl.lit(checks[i].name)) for i in masks])
    why = pl.concat_list([pl.when(pl.col(f"_f{i}")).then(pl.lit(checks[i].reason)) for i in masks])
    quarantine = (
        pl.concat([frame, flags], how="horizontal")
        .filter(bad)
        .select(
            *frame.columns,
            failed.list.drop_nulls().alias("failed_expectations"),
            why.list.drop_nulls().list.join("; ").alias("failure_reasons"),
        )
    )
    return ValidationOutcome(
        valid=frame.filter(~bad),
        quarantine=quarantine,
        unexpected_counts={k: v for k, v in counts.items() if v},
        gx_result=gx_result,
    )
