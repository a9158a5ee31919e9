"""History: the canonical B12 administrations already processed, by service date.

<out>/history/service_date=YYYY-MM-DD/part-0.parquet holds canonical (text) rows with lineage.
A later row with the same admin_id (a chart correction) supersedes the earlier one, wherever its
date was. Facts are always re-derived from these rows, so a rules or site-config change applies to
history exactly as it would to a first run.
"""

from __future__ import annotations

import bisect
import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import polars as pl

from b12pipeline.files import link_into_place
from b12pipeline.normalize import one_chunk_in_place
from b12pipeline.queues import PART_NAME, Compression, atomic_write_parquets, scan_partitions

K = TypeVar("K")
# History is this store's own working data, written by every night and read back by the next: lz4
# writes a 1M-row night's 120 partitions in ~0.6 s of CPU less than zstd (files ~40% larger). The
# queues, which coders' tools read, stay zstd.
HISTORY_COMPRESSION: Compression = "lz4"


def _service_date() -> pl.Expr:
    return pl.col("admin_time").str.slice(0, 10).str.strptime(pl.Date, "%Y-%m-%d", strict=False)


def history_paths(history_root: Path) -> dict[dt.date, Path]:
    return {
        dt.date.fromisoformat(p.parent.name.split("=", 1)[1]): p
        for p in history_root.glob(f"service_date=*/{PART_NAME}")
    }


def read_history(history_root: Path, start: dt.date | None = None, end: dt.date | None = None) -> pl.DataFrame | None:
    """Canonical rows with start <= service_date <= end (all when unbounded); None if there are none."""
    paths = [
        p
        for d, p in sorted(history_paths(history_root).items())
        if (start is None or d >= start) and (end is None or d <= end)
    ]
    if not paths:
        return None
    return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")


def read_for_dates(
    history_root: Path,
    dates: list[dt.date],
    lookback_days: int,
    patients: pl.Series | None = None,
    earlier_columns: tuple[str, ...] | None = None,
) -> pl.DataFrame | None:
    """What re-evaluating `dates` needs, and no more: the rows on those dates (only `patients`' rows
    when given), and the earlier rows of the same patients back to the first date's look-back
    (with `earlier_columns`, only those columns of them are read; the others are null).

    Cross-row facts are per patient (crossrow.py), so other patients' rows cannot change a finding;
    reading only these keeps a small night on a year of history as cheap as on an empty store.
    Rows come in date order, each date's file in its own order (as read_history gives them), with
    the columns and types read_history gives them."""
    dates = sorted(set(dates))
    if not dates:
        return None
    wanted, paths = set(dates), history_paths(history_root)
    start = dates[0] - dt.timedelta(days=lookback_days)
    on_dates = {d: pl.scan_parquet(p) for d, p in paths.items() if d in wanted}
    if patients is not None:
        ids = patients.unique().implode()
        on_dates = {d: f.filter(pl.col("patient_id").is_in(ids)) for d, f in on_dates.items()}
    on_rows = _collect_in_groups(on_dates)
    ids = (
        pl.concat([f.select("patient_id") for f in on_rows.values()])["patient_id"].drop_nulls().unique().implode()
        if on_rows
        else pl.Series("patient_id", [], dtype=pl.String).implode()
    )
    before = sorted(d for d in paths if start <= d <= dates[-1] and d not in wanted)
    # The earlier rows, one query per run of dates between two evaluated dates (so the pieces stay in
    # date order): one query over a year of files decodes about half of what a query per file does
    # (a 2,000-row night on a year: +95 -> +44 MB, 0.48 -> 0.26 s).
    runs: dict[int, list[dt.date]] = {}
    for d in before:
        runs.setdefault(bisect.bisect(dates, d), []).append(d)
    pieces = {d: [f] for d, f in on_rows.items() if f.height}
    pieces.update({run[0]: _earlier_rows([paths[d] for d in run], ids, earlier_columns) for run in runs.values()})
    frames = [f for d in sorted(pieces) for f in pieces[d]]
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def _earlier_rows(paths: list[Path], ids: pl.Series, columns: tuple[str, ...] | None) -> list[pl.DataFrame]:
    """The rows of `ids` in `paths`, in file order, as frames to concatenate ([] when none). With
    `columns`, only those are read, each file's rows preceded by an empty frame of the file's own
    columns, so the concatenation has the columns (in order) and types of whole files.
    Files written before a column was added differ in schema: one query cannot read them
    together, so those are read a file at a time (types of columns not read: the first file's)."""

    def query(scan: pl.LazyFrame) -> tuple[pl.DataFrame, pl.LazyFrame]:
        schema = scan.collect_schema()
        keep = [c for c in schema if columns is None or c in columns]
        return pl.DataFrame(schema=schema), scan.select(keep).filter(pl.col("patient_id").is_in(ids))

    try:
        queries = [query(pl.scan_parquet(paths))]
        found = [queries[0][1].collect()]
    except (pl.exceptions.ColumnNotFoundError, pl.exceptions.SchemaError):
        queries = [query(pl.scan_parquet(p)) for p in paths]
        found = list(_collect_in_groups({i: q for i, (_, q) in enumerate(queries)}).values())
    return [
        frame
        for (shape, _), rows in zip(queries, found, strict=True)
        if rows.height
        for frame in ([shape, rows] if columns is not None else [rows])
    ]


# Files read at once: enough to keep the cores busy, few enough that a year of files is never
# decoded all at the same time (a night's patients over a year: peak 165 -> 135 MB, same speed).
COLLECT_GROUP = 16


def _collect_in_groups(scans: dict[K, pl.LazyFrame]) -> dict[K, pl.DataFrame]:
    keys, frames = list(scans), list(scans.values())
    collected: dict[K, pl.DataFrame] = {}
    for i in range(0, len(keys), COLLECT_GROUP):
        group = pl.collect_all(frames[i : i + COLLECT_GROUP])
        collected.update(zip(keys[i : i + COLLECT_GROUP], group, strict=True))
    return collected


def earlier_versions(history_root: Path, rows: pl.DataFrame) -> pl.DataFrame:
    """The history rows that `rows` supersede (same admin_id): their admin_id, patient_id and file
    (`_path`). One scan of the year's admin ids, shared by patients_of and merge_into_history."""
    paths = list(history_paths(history_root).values())
    if not paths or rows.height == 0:  # a night whose files staged nothing reads no history
        return pl.DataFrame(schema={"admin_id": pl.String, "patient_id": pl.String, "_path": pl.String})
    ids = rows["admin_id"].drop_nulls().unique().implode()
    return (
        pl.scan_parquet(paths, include_file_paths="_path")
        .select("admin_id", "patient_id", "_path")
        .filter(pl.col("admin_id").is_in(ids))
        .collect()
    )


def patients_of(history_root: Path, rows: pl.DataFrame, earlier: pl.DataFrame | None = None) -> pl.Series:
    """Patient ids of `rows` and of the history rows they supersede (same admin_id): a correction
    that moves a dose to another patient changes both patients' history. `earlier`: those rows'
    earlier_versions, when the caller has them."""
    if earlier is None:
        earlier = earlier_versions(history_root, rows)
    return (
        pl.concat([rows["patient_id"].cast(pl.String), earlier["patient_id"].cast(pl.String)])
        .drop_nulls()
        .unique()
        .sort()
    )


def _partition(root: Path, day: dt.date) -> Path:
    return root / f"service_date={day.isoformat()}" / PART_NAME


def stage_rows(rows: pl.DataFrame, folder: Path) -> int:
    """Stage one extract's valid rows for merge_into_history under `folder`, one file per service date
    laid out as history is: the last row of each admin_id (a later row of the same administration in
    the file is its correction), in admin_id order, written as history writes its files. A date
    nothing else changes tonight then enters history as that file, linked, not written a second time
    (a 1M-row night: ~0.8 s of the merge). Returns the rows staged."""
    kept = rows.select("admin_id", _service_date().alias("_day")).with_row_index("_i").unique("admin_id", keep="last")
    # Each date's row numbers in admin_id order: a sort per date is ~2x cheaper than one of all rows.
    by_day = {day: part.sort("admin_id")["_i"] for (day,), part in kept.partition_by("_day", as_dict=True).items()}
    # Gathering from one contiguous block is ~15x faster than from many (a file read in row groups):
    # made one in place, a column at a time, so the caller's frame is not held twice.
    one_chunk_in_place(rows, rows.columns)
    atomic_write_parquets(
        ((rows[index], _partition(folder, day)) for day, index in sorted(by_day.items())),
        compression=HISTORY_COMPRESSION,
    )
    return kept.height


def staged_keys(staged: list[Path]) -> pl.DataFrame:
    """admin_id, patient_id and file (`_path`) of every row staged in the `staged` folders, in order."""
    paths = [p for folder in staged for _, p in sorted(history_paths(folder).items())]
    schema = {"admin_id": pl.String, "patient_id": pl.String}
    if not paths:
        return pl.DataFrame(schema=schema | {"_path": pl.String})
    return scan_partitions(paths, schema, include_file_paths="_path").collect()


def merge_into_history(
    history_root: Path, staged: list[Path], keys: pl.DataFrame | None = None, earlier: pl.DataFrame | None = None
) -> list[dt.date]:
    """Upsert the rows staged in `staged` (stage_rows folders, in the night's file order: a later
    file's row of an admin_id supersedes an earlier one's) by admin_id; returns every service date
    whose rows changed. `keys` and `earlier`: the staged rows' staged_keys and earlier_versions, read
    just before, when the caller has them."""
    keys = keys if keys is not None else staged_keys(staged)
    if keys.height == 0:
        return []
    existing = history_paths(history_root)
    # Rows of earlier versions of incoming admin_ids, by the date holding them: those dates lose
    # them (supersession); every other date's rows are kept as they are.
    superseded: dict[dt.date, pl.Series] = {}
    if existing:
        found = earlier if earlier is not None else earlier_versions(history_root, keys)
        by_path = {str(p): d for d, p in existing.items()}
        superseded = {
            by_path[key[0]]: group["admin_id"] for key, group in found.partition_by("_path", as_dict=True).items()
        }
    # Each date's staged files, and the admin_ids a later file of the night takes from each of them.
    per_folder = [history_paths(folder) for folder in staged]
    files: dict[dt.date, list[Path]] = {}
    for paths in per_folder:
        for day, path in sorted(paths.items()):
            files.setdefault(day, []).append(path)
    later: dict[str, pl.Series] = {}
    if len(staged) > 1:  # a folder holds each admin_id once (stage_rows): only another file takes one
        rank = {str(p): n for n, paths in enumerate(per_folder) for p in paths.values()}
        ranked = keys.with_columns(pl.col("_path").replace_strict(rank, return_dtype=pl.Int64).alias("_file"))
        taken = ranked.filter(pl.col("_file") < pl.col("_file").max().over("admin_id"))
        later = {key[0]: group["admin_id"] for key, group in taken.partition_by("_path", as_dict=True).items()}
    touched = sorted(set(superseded) | set(files))

    def partitions() -> Iterator[tuple[pl.DataFrame, Path]]:
        for day in touched:
            target = _partition(history_root, day)
            old = pl.read_parquet(existing[day]) if day in existing else None
            if old is not None and day in superseded:
                old = old.filter(~pl.col("admin_id").is_in(superseded[day].implode()))
            new = files.get(day, [])
            if (old is None or not old.height) and len(new) == 1 and str(new[0]) not in later:
                link_into_place(new[0], target)  # already as history writes it
                continue
            frames = [old] if old is not None and old.height else []
            for path in new:
                rows = pl.read_parquet(path)
                if str(path) in later:
                    rows = rows.filter(~pl.col("admin_id").is_in(later[str(path)].implode()))
                frames.append(rows)
            frames = [f for f in frames if f.height]
            if not frames:
                shutil.rmtree(target.parent, ignore_errors=True)
                continue
            yield pl.concat(frames, how="diagonal_relaxed").sort("admin_id"), target

    atomic_write_parquets(partitions(), compression=HISTORY_COMPRESSION)
    return touched
