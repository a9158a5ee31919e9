"""Work queues and quarantine on disk: atomic, idempotent Parquet partitions (work-queues.md).

Layout: <out>/queues/<queue>/service_date=YYYY-MM-DD/part-0.parquet. A partition is one file,
written under a dot-prefixed temporary name (readers skip dot files) and renamed into place, so a
reader sees the old file or the new one, never half of one. Writing a night replaces exactly the
partitions of the dates it evaluated; a partition with no findings left is removed.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import resource
import shutil
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Literal

import polars as pl

from b12pipeline.engine.evaluate import FINDING_COLUMNS
from b12pipeline.engine.rulefile import QUEUES
from b12pipeline.files import temporary_name

PART_NAME = "part-0.parquet"
Compression = Literal["zstd", "lz4"]


def _refused_write(partial: Path) -> int:
    """The OS reason for a refused write Polars words without one: the file reached the process's
    file-size limit, or the file system has no space left; else a plain I/O error."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    size = partial.stat().st_size if partial.exists() else 0
    if limit != resource.RLIM_INFINITY and size >= limit:
        return errno.EFBIG
    if os.statvfs(partial.parent).f_bavail == 0:
        return errno.ENOSPC
    return errno.EIO


def atomic_write_parquet(
    frame: pl.DataFrame, target: Path, *, one_row_group: bool = False, compression: Compression = "zstd"
) -> None:
    """Write `frame` to `target` so that no reader ever sees a partial file.

    `one_row_group`: the file reads back as one contiguous block (a frame in several row groups
    reads back in several pieces, and making it one block costs a second copy of it).
    `compression`: zstd for files coders' tools read (queues, quarantine); lz4 for the store's own
    working files (history, staging), cheaper to write and read back."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        try:
            rows_per_group = max(frame.height, 1) if one_row_group else None  # None: Polars' default
            frame.write_parquet(tmp, compression=compression, statistics=True, row_group_size=rows_per_group)
        except pl.exceptions.PolarsError as exc:
            # Writing our own frame fails only when the disk does (full, a size limit, read-only);
            # Polars words that in several ways, not always with the OS error: say it as one.
            code = re.search(r"os error (\d+)", str(exc))
            err = int(code.group(1)) if code else _refused_write(tmp)
            raise OSError(err, os.strerror(err), str(target)) from None
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# Polars encodes one file on one core and a night writes hundreds of small partitions, each mostly
# per-file work: writing a few at once uses the other cores (each file is still atomic on its own).
WRITERS = max(1, min(4, os.cpu_count() or 1))


def atomic_write_parquets(files: Iterable[tuple[pl.DataFrame, Path]], compression: Compression = "zstd") -> None:
    """atomic_write_parquet for each (frame, target), WRITERS at a time. `files` is consumed as
    writers free up, so a generator holds only a few frames at once; the first failure is raised."""
    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        pending: set[Future] = set()
        for frame, target in files:
            if len(pending) >= 2 * WRITERS:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
            pending.add(pool.submit(atomic_write_parquet, frame, target, compression=compression))
        for future in pending:
            future.result()


def scan_partitions(paths: Iterable[Path], schema: dict, **options) -> pl.LazyFrame:
    """Partition files (queues or history) as one query of `schema`'s columns: a file written
    before a column existed reads it as empty, not as an error; other columns are not read."""
    return pl.scan_parquet(
        list(paths), schema=schema, missing_columns="insert", extra_columns="ignore", hive_partitioning=False, **options
    )


# The row order within a queue partition file.
PARTITION_ORDER = ("rule_id", "admin_id")


def partition_dir(root: Path, queue: str, service_date: dt.date) -> Path:
    return root / queue / f"service_date={service_date.isoformat()}"


def write_queue_partitions(
    findings: pl.DataFrame, queues_root: Path, dates: list[dt.date], patients: pl.Series | None = None
) -> dict[str, int]:
    """Replace the partitions of `dates` in every queue with `findings`; returns rows per queue.

    With `patients`, only those patients' findings in each partition are replaced (`findings` holds
    theirs); the other patients' findings are kept as they are."""
    written = {q: 0 for q in QUEUES}
    # One sort, then partitions that keep its order: each is in its file's row order already (a sort
    # per partition cost ~0.15 s of a night's 360). A stable row order keeps re-runs byte-identical.
    order = ["queue", "service_date", *PARTITION_ORDER]
    findings = findings.select(list(FINDING_COLUMNS)).sort(order)
    by_key = (
        findings.partition_by(["queue", "service_date"], as_dict=True, maintain_order=True) if findings.height else {}
    )

    def partitions() -> Iterator[tuple[pl.DataFrame, Path]]:
        for queue in QUEUES:
            for day in sorted(set(dates)):
                part = partition_dir(queues_root, queue, day)
                rows = by_key.get((queue, day))
                if patients is not None and (part / PART_NAME).exists():
                    kept = pl.read_parquet(part / PART_NAME).filter(
                        ~pl.col("patient_id").is_in(patients.unique().implode()).fill_null(False)
                    )
                    kept = kept.with_columns(pl.lit(day).alias("service_date")).select(list(FINDING_COLUMNS))
                    rows = kept if rows is None else pl.concat([kept, rows], how="vertical_relaxed")
                    rows = rows.sort(PARTITION_ORDER)
                if rows is None or rows.height == 0:
                    if part.exists():
                        shutil.rmtree(part)
                    continue
                yield rows.drop("service_date"), part / PART_NAME  # the partition value lives in the path
                written[queue] += rows.height

    atomic_write_parquets(partitions())
    return written


def read_queue(
    queues_root: Path,
    queue: str | None = None,
    dates: list[dt.date] | None = None,
    columns: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Every finding under queues_root (optionally one queue, only `dates`) as one frame, service_date
    restored; only `columns` of them when given (the messages are most of a partition's bytes)."""
    wanted = list(FINDING_COLUMNS) if columns is None else list(columns)
    if dates is None:
        paths = sorted(
            (queues_root / queue).glob("service_date=*/*.parquet")
            if queue
            else queues_root.glob("*/service_date=*/*.parquet")
        )
    else:
        # Only the dates' folders are listed: a night reads a few dates of a year of partitions,
        # and listing the whole year cost ~0.2 s.
        queues = [queue] if queue else [p.name for p in queues_root.glob("*/")]
        paths = sorted(
            p for q in queues for d in set(dates) for p in partition_dir(queues_root, q, d).glob("*.parquet")
        )
    if not paths:
        return pl.DataFrame(schema={c: FINDING_COLUMNS[c] for c in wanted})
    # One query over every partition (a file per partition read one by one cost ~1 s for 1,000 of
    # them). Partitions written before a column was added lack it: it reads as empty, not as an error.
    # The sort keys are read whatever is wanted: the order is the same either way.
    keys = ("service_date", "queue", "rule_id", "admin_id")
    stored = {c: t for c, t in FINDING_COLUMNS.items() if c != "service_date" and (c in wanted or c in keys)}
    found = (
        scan_partitions(paths, stored, include_file_paths="_partition")
        .with_columns(
            pl.col("_partition")
            .str.extract(r"service_date=([0-9]{4}-[0-9]{2}-[0-9]{2})[/\\][^/\\]+$", 1)
            .str.to_date("%Y-%m-%d")
            .alias("service_date")
        )
        .collect()
    )
    return found.sort(*keys).select(wanted)


def write_quarantine(rows: pl.DataFrame, quarantine_root: Path, file_key: str, night: dt.date, run_id: str) -> int:
    """Quarantine rows of one source file, by service date when readable, else by extract date.

    The file name is the source file's checksum key, so re-running the same file replaces its
    quarantine rows instead of adding a second copy.
    """
    if rows.height == 0:
        return 0
    day = (
        rows["admin_time"]
        .str.extract(r"^([0-9]{4}-[0-9]{2}-[0-9]{2})", 1)
        .str.strptime(pl.Date, "%Y-%m-%d", strict=False)
    )
    # A year outside 1..9999 is a date Python cannot name (a partition folder needs one): unreadable.
    day = pl.select(pl.when(day.dt.year().is_between(1, 9999)).then(day)).to_series()
    rows = rows.with_columns(day.alias("_day"), pl.lit(run_id).alias("run_id"))
    for (value,), group in rows.group_by(["_day"]):
        folder = f"service_date={value.isoformat()}" if value is not None else f"extract_date={night.isoformat()}"
        atomic_write_parquet(group.drop("_day").sort("source_row"), quarantine_root / folder / f"{file_key}.parquet")
    return rows.height
