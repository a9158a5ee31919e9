"""Validate: run the Great Expectations suite on B12 rows; split valid rows from quarantine.

GX is the authority on whether each expectation holds and on how many rows break it. It runs in
BASIC mode (counts; SUMMARY's extra value and index tallies cost a fifth more at 1M rows, COMPLETE
row lists seconds and gigabytes); the exact failing rows are then found by evaluating the same
expectation in Polars, and the two counts must agree.

When they do not (the two regex engines read a pattern differently for some text), one odd cell
must not stop the night: GX is asked again for that expectation alone, with its failing row
indices, and every row either checker fails goes to quarantine; a row they disagree on carries
both verdicts in its reason. The suite uses ASCII classes ([0-9], not \\d) so the engines agree.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import polars as pl

from b12pipeline import normalize
from b12pipeline.engine.settings import SiteConfig
from b12pipeline.ingest.canonical import scrub
from b12pipeline.paths import schemas_dir

DEFAULT_SUITE = "expectations/canonical_extract.json"

# Checks GX cannot express on text (a regex cannot know February has no 30th): same row-mask form,
# applied only where the column passed its GX expectations (one reason per problem).
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


class SuiteError(RuntimeError):
    """The expectation suite is unusable (GX dropped an expectation, or an unsupported type)."""


@dataclass
class ValidationOutcome:
    valid: pl.DataFrame
    quarantine: pl.DataFrame  # canonical columns + failed_expectations + failure_reasons
    unexpected_counts: dict[str, int] = field(default_factory=dict)  # counts only: no values
    gx_result: dict | None = None  # GX's result (counts, no row values), rendered into Data Docs

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
        return ValidationOutcome(valid=self.valid, quarantine=quarantine.sort("source_row"), unexpected_counts=counts)


def expectation_name(config: dict) -> str:
    return f"{config['type']}({config['kwargs'].get('column', '')})"


def polars_mask(config: dict) -> pl.Expr:
    """Rows that break one expectation, the way GX counts them (map expectations skip nulls)."""
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


class SuiteRunner:
    """One ephemeral GX context, datasource and validation definition per suite file."""

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
            polars_mask(exp)  # refuse an expectation we cannot turn into exact row masks
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
        batch = (
            self.context.data_sources.add_pandas(name="extract")
            .add_dataframe_asset(name="b12_rows")
            .add_batch_definition_whole_dataframe("whole_frame")
        )
        self.batch_definition = batch
        self.definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=self.spec["name"], data=batch, suite=self.suite)
        )
        self._lock = threading.Lock()

    @property
    def columns(self) -> list[str]:
        """The columns the suite reads: GX's cost grows with the frame it is handed, not the suite."""
        return sorted({e["kwargs"]["column"] for e in self.spec["expectations"] if "column" in e["kwargs"]})

    def unexpected_counts(self, frame: pl.DataFrame) -> dict[str, int]:
        return self.run(frame)[0]

    def run(self, frame: pl.DataFrame) -> tuple[dict[str, int], dict]:
        """Counts per expectation, and the GX result as JSON for the run's Data Docs.

        partial_unexpected_count 0: GX would otherwise keep up to 20 failing values per expectation
        (patient and admin ids among them); counts are all we need, and all we keep.
        """
        batch = frame.select(self.columns).to_pandas()
        with self._lock:
            result = self.definition.run(
                batch_parameters={"dataframe": batch},
                result_format={"result_format": "BASIC", "partial_unexpected_count": 0},
            )
        counts = {}
        for r in result.results:
            cfg = r.expectation_config
            if cfg is None:  # GX returns each result with its expectation; without it nothing names the count
                raise SuiteError(f"{self.path}: GX returned a validation result without its expectation")
            name = f"{cfg.type}({cfg.kwargs.get('column', '')})"
            if r.exception_info and r.exception_info.get("raised_exception"):
                # GX passes on the underlying error's text, which can quote the cell it failed on
                why = scrub(Exception(r.exception_info.get("exception_message") or "an exception"))
                raise SuiteError(f"{self.path}: {name} raised in GX: {why}")
            counts[name] = int(r.result.get("unexpected_count") or 0)
        return counts, result.to_json_dict()

    def failing_rows(self, frame: pl.DataFrame, name: str) -> pl.Series:
        """GX's own row verdicts for one expectation (True = fails), for the rare frame where its
        count and the Polars mask disagree. COMPLETE lists values too: only the indices are kept."""
        import great_expectations as gx

        spec = next(e for e in self.spec["expectations"] if expectation_name(e) == name)
        suite = gx.ExpectationSuite(name=f"{self.spec['name']}-recheck", expectations=[spec])
        expectation = suite.expectations[0]
        batch = frame.select(spec["kwargs"]["column"]).to_pandas()
        with self._lock:
            result = self.batch_definition.get_batch(batch_parameters={"dataframe": batch}).validate(
                expectation, result_format={"result_format": "COMPLETE"}
            )
        failed = [int(i) for i in result.result.get("unexpected_index_list") or []]
        mask = [False] * frame.height
        for i in failed:
            mask[i] = True
        return pl.Series(name, mask, dtype=pl.Boolean)


@lru_cache(maxsize=4)
def suite_runner(suite_path: Path | None = None) -> SuiteRunner:
    return SuiteRunner(Path(suite_path) if suite_path else schemas_dir() / DEFAULT_SUITE)


SERVICE_DATE_CHECK = "b12_service_date_in_plausible_window(admin_time)"


def service_date_window(night: dt.date, config: SiteConfig) -> tuple[dt.date, dt.date]:
    """The plausible dates of service for a night's rows (site settings earliest_service_date and
    service_date_max_days_after_night): a year typed 1902 or 2204 is not a dose to bill."""
    return config.earliest_service_date, night + dt.timedelta(days=int(config.service_date_max_days_after_night))


def validate(
    frame: pl.DataFrame, suite_path: Path | None = None, service_dates: tuple[dt.date, dt.date] | None = None
) -> ValidationOutcome:
    """Split the canonical B12 rows of one file into valid rows and quarantine rows.

    `service_dates` (first, last): rows whose date of service (admin_time's local date as written)
    falls outside are quarantined too (service_date_window)."""
    runner = suite_runner(suite_path)
    if frame.height == 0:
        empty_q = frame.with_columns(
            pl.lit([], dtype=pl.List(pl.String)).alias("failed_expectations"),
            pl.lit(None, dtype=pl.String).alias("failure_reasons"),
        )
        return ValidationOutcome(valid=frame, quarantine=empty_q.clear())
    gx_counts, gx_result = runner.run(frame)
    names, masks, reasons = [], [], []
    by_column: dict[str, list[pl.Expr]] = {}
    for exp in runner.spec["expectations"]:
        names.append(expectation_name(exp))
        masks.append(polars_mask(exp))
        reasons.append(exp.get("meta", {}).get("reason", expectation_name(exp)))
        by_column.setdefault(exp["kwargs"].get("column", ""), []).append(masks[-1])
    for name, (column, mask, reason) in CALENDAR_CHECKS.items():
        names.append(name)
        earlier = by_column.get(column, [])
        masks.append(mask() & ~pl.any_horizontal([m.fill_null(False) for m in earlier]) if earlier else mask())
        reasons.append(reason)
        by_column.setdefault(column, []).append(masks[-1])
    if service_dates is not None:
        first, last = service_dates
        day = normalize.local_timestamp().dt.date()
        names.append(SERVICE_DATE_CHECK)
        outside = day.is_not_null() & ~day.is_between(first, last)
        masks.append(outside & ~pl.any_horizontal([m.fill_null(False) for m in by_column.get("admin_time", [])]))
        # The window's ends are settings, not the row's value: the value itself is never quoted.
        reasons.append(
            f"admin_time: the date of service is outside the plausible window {first}..{last} "
            "(earliest_service_date .. the night + service_date_max_days_after_night)"
        )
    flags = frame.select([m.fill_null(False).alias(f"_f{i}") for i, m in enumerate(masks)])
    counts = {name: int(flags[f"_f{i}"].sum()) for i, name in enumerate(names)}
    for name, gx_count in gx_counts.items():
        if counts.get(name) != gx_count:
            i = names.index(name)
            ours, theirs = flags[f"_f{i}"], runner.failing_rows(frame, name)
            verdicts = {
                f"validators_disagree({name}): GX fails, Polars passes": theirs & ~ours,
                f"validators_disagree({name}): Polars fails, GX passes": ours & ~theirs,
            }
            flags = flags.with_columns((ours & theirs).alias(f"_f{i}"))  # both say it fails
            counts[name] = int(flags[f"_f{i}"].sum())
            for label, rows in verdicts.items():
                names.append(label)
                reasons.append(f"{reasons[i]} ({label.split(': ', 1)[1]}: held for review)")
                flags = flags.with_columns(rows.alias(f"_f{len(names) - 1}"))
                counts[label] = int(rows.sum())
    failed = pl.concat_list([pl.when(pl.col(f"_f{i}")).then(pl.lit(n)) for i, n in enumerate(names)]).list.drop_nulls()
    why = (
        pl.concat_list([pl.when(pl.col(f"_f{i}")).then(pl.lit(r)) for i, r in enumerate(reasons)])
        .list.drop_nulls()
        .list.join("; ")
    )
    marked = pl.concat([frame, flags], how="horizontal").with_columns(
        failed.alias("failed_expectations"), why.alias("failure_reasons")
    )
    bad = pl.col("failed_expectations").list.len() > 0
    return ValidationOutcome(
        valid=marked.filter(~bad).select(frame.columns),
        quarantine=marked.filter(bad).select(*frame.columns, "failed_expectations", "failure_reasons"),
        unexpected_counts={k: v for k, v in counts.items() if v},
        gx_result=gx_result,
    )
