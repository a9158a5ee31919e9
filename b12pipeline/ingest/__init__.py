"""Ingest: one reader per source format, each returning the canonical frame (read.py picks the reader).

The canonical frame has every contract column as text (stripped; empty -> null), plus
`source_file`, `source_row` (1-based data row, header not counted) and one `has_<column>` flag per
presence-tracked column. A file that cannot be read into it raises FileRejected, naming the file
and what is wrong; the caller moves it aside and goes on with the night.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import polars as pl

from b12pipeline.contract import Contract, load_contract


class FileRejected(Exception):
    """The whole file cannot be read into the contract. str() is the operator-facing message."""

    def __init__(self, path: Path | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class Extract:
    """A file read into the canonical frame."""

    path: Path
    source_format: str
    frame: pl.DataFrame
    ignored_columns: list[str] = field(default_factory=list)
    # Rows the reader could not map into the contract (an unparseable FHIR line, an unknown MAR
    # action code): canonical columns (what could be read) + failed_expectations + failure_reasons.
    # They count as rows read and flow to the quarantine output beside validation's rows.
    quarantine: pl.DataFrame | None = None
    # Rows read but not materialised because the caller's `keep` filter (B12 scope) excluded them.
    rows_skipped: int = 0

    @property
    def rows(self) -> int:
        return self.frame.height + self.quarantined_rows + self.rows_skipped

    @property
    def quarantined_rows(self) -> int:
        return 0 if self.quarantine is None else self.quarantine.height

    def quarantine_in_scope(self, scope: pl.Expr) -> pl.DataFrame | None:
        """Reader-quarantined rows that are B12 rows, or whose medication could not be read at all
        (an unparseable line might be a B12 dose: it is kept rather than counted out of scope)."""
        if self.quarantine is None or not self.quarantine.height:
            return None
        unreadable = pl.all_horizontal(pl.col(c).is_null() for c in ("medication_name", "ndc", "rxnorm_code"))
        return self.quarantine.filter(scope | unreadable)


def split_quarantine(frame: pl.DataFrame, reasons: pl.Series, check: str) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Split a canonical frame on a reader's per-row reason (null = fine) into (rows, quarantine)."""
    bad = reasons.is_not_null()
    if not bad.any():
        return frame, None
    held = frame.filter(bad).with_columns(
        pl.lit([check], dtype=pl.List(pl.String)).alias("failed_expectations"),
        reasons.filter(bad).alias("failure_reasons"),
    )
    return frame.filter(~bad), held


@overload
def canonicalise(raw: pl.DataFrame, path: Path, contract: Contract | None = None) -> tuple[pl.DataFrame, list[str]]: ...
@overload
def canonicalise(raw: pl.LazyFrame, path: Path, contract: Contract | None = None) -> tuple[pl.LazyFrame, list[str]]: ...
def canonicalise(
    raw: pl.DataFrame | pl.LazyFrame,
    path: Path,
    contract: Contract | None = None,
) -> tuple[pl.DataFrame | pl.LazyFrame, list[str]]:
    """Shape an all-text frame (eager or lazy) into the canonical frame; reject it if a required
    column is absent. A lazy frame must already carry `source_row` (the reader's row index)."""
    contract = contract or load_contract()
    names = raw.collect_schema().names() if isinstance(raw, pl.LazyFrame) else raw.columns
    rename = {c: c.strip().lower() for c in names if c != "source_row" or isinstance(raw, pl.DataFrame)}
    if len(set(rename.values())) != len(rename):
        raise FileRejected(path, "duplicate column names (compared case-insensitively)")
    raw = raw.rename(rename)
    present = set(rename.values())
    missing = [c for c in contract.required_in_file if c not in present]
    if missing:
        hint = ""
        if len(rename) == 1:  # never quoted: in a file without a header, the "header" is patient data
            hint = " (the header was read as one column: is the delimiter ','?)"
        raise FileRejected(path, f"missing required column(s) {', '.join(missing)}{hint}")
    ignored = [c for c in rename.values() if c not in contract.columns]
    exprs = []
    for name in contract.names:
        if name in present:
            col = pl.col(name).cast(pl.String).str.strip_chars()
            exprs.append(pl.when(col == "").then(None).otherwise(col).alias(name))
        else:
            exprs.append(pl.lit(None, dtype=pl.String).alias(name))
    exprs.append(pl.lit(path.name).alias("source_file"))
    if isinstance(raw, pl.LazyFrame):
        exprs.append(pl.col("source_row").cast(pl.Int64))
    else:
        exprs.append((pl.int_range(pl.len(), dtype=pl.Int64) + 1).alias("source_row"))
    for name in contract.presence_tracked:
        exprs.append(pl.lit(name in present).alias(f"has_{name}"))
    return raw.select(exprs), ignored


# Above this many distinct combinations of the scope's columns, judging each combination once
# stops paying for the extra pass: the rows are filtered with the expression directly.
MAX_SCOPE_COMBINATIONS = 200_000
# A CSV up to this size is read in one pass, every row, and the rows out of scope dropped in memory:
# its canonical frame is about the file's own size (a 260 MiB extract: 234 MiB), and the second
# pass over the file cost ~0.4 s of a 1M-row night. A larger one is read twice, streaming, so an
# all-medication extract never holds its other rows (docs/decisions.md).
ONE_PASS_MAX_BYTES = 512 << 20


def collect_kept(frame: pl.LazyFrame, keep: pl.Expr | None, whole: bool = False) -> tuple[pl.DataFrame, int]:
    """Materialise only the rows that satisfy `keep`, in file order, and count the rest.

    A nightly extract may hold every medication: keeping 5% of 5M rows instead of all of them is
    what holds an all-medication night within a few GB, so by default the rows are read twice,
    streaming: once for the combinations below, once keeping only the rows in scope. `whole`: the
    frame is small enough (or in memory already) to collect every row in one pass and drop the rest.
    `keep` is row-wise (a row's verdict depends only on its own cells), so it is judged once per
    distinct combination of the columns it reads (a few hundred NDC/RxNorm/name combinations in a
    million rows, where the NDC's shape rules cost most) and the rows are then kept by those
    combinations."""
    if keep is None:
        return frame.collect(), 0
    columns = sorted(set(keep.meta.root_names()))
    if whole:
        rows = frame.collect(engine="streaming")
        combinations = rows.group_by(columns).len()
        if combinations.height > MAX_SCOPE_COMBINATIONS:
            kept = rows.filter(keep)
        else:
            wanted = combinations.filter(keep).select(columns)
            if wanted.height == combinations.height:  # every row in scope (a B12-only extract)
                return rows, 0
            kept = rows.join(wanted, on=columns, how="semi", nulls_equal=True, maintain_order="left")
        return kept, rows.height - kept.height
    combinations = frame.group_by(columns).len().collect(engine="streaming")
    total = int(combinations["len"].sum())
    if combinations.height > MAX_SCOPE_COMBINATIONS:
        kept = frame.filter(keep).collect(engine="streaming")
        return kept, total - kept.height
    wanted = combinations.filter(keep).select(columns)
    kept = frame.join(wanted.lazy(), on=columns, how="semi", nulls_equal=True, maintain_order="left").collect(
        engine="streaming"
    )
    return kept, total - kept.height
