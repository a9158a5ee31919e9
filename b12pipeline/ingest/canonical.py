"""Readers for extracts that already carry the canonical column names: CSV and Parquet."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from b12pipeline.ingest import FileRejected, canonicalise

SUFFIX_FORMATS = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
                  ".ndjson": "fhir", ".jsonl": "fhir"}


def format_from_suffix(path: Path) -> str:
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FileRejected(path, f"cannot tell the format from the extension {path.suffix!r}; "
                                 f"name it .csv, .parquet or .ndjson, or pass --source")
    return fmt


def read_csv(path: Path) -> tuple[pl.DataFrame, list[str]]:
    try:
        raw = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy", raise_if_empty=True,
                          truncate_ragged_lines=False)
    except pl.exceptions.NoDataError:
        raise FileRejected(path, "the file is empty (no header row)") from None
    except (pl.exceptions.ComputeError, pl.exceptions.PolarsError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileRejected(path, f"not a readable CSV file: {first[:300]}") from None
    return canonicalise(raw, path)


def _as_text(frame: pl.DataFrame) -> pl.DataFrame:
    """Typed Parquet columns -> the same text a CSV would carry (ISO dates and times)."""
    exprs = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            fmt = "%Y-%m-%dT%H:%M:%S%:z" if dtype.time_zone else "%Y-%m-%dT%H:%M:%S"
            exprs.append(col.dt.to_string(fmt).alias(name))
        elif dtype == pl.Date:
            exprs.append(col.dt.to_string("%Y-%m-%d").alias(name))
        elif dtype in (pl.List, pl.Struct) or isinstance(dtype, (pl.List, pl.Struct, pl.Array)):
            exprs.append(pl.lit(None, dtype=pl.String).alias(name))
        else:
            exprs.append(col.cast(pl.String).alias(name))
    return frame.select(exprs)


def read_parquet(path: Path) -> tuple[pl.DataFrame, list[str]]:
    try:
        pq.read_metadata(path)  # cheap check that this is Parquet at all
        raw = pl.read_parquet(path)
    except Exception as exc:  # pyarrow and polars raise several types for a non-Parquet file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileRejected(path, f"not a readable Parquet file: {first[:300]}") from None
    return canonicalise(_as_text(raw), path)
