"""Readers for extracts that already carry the canonical column names: CSV and Parquet."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from b12pipeline import ingest
from b12pipeline.contract import load_contract
from b12pipeline.engine.settings import SiteConfig
from b12pipeline.ingest import FileRejected, canonicalise, collect_kept
from b12pipeline.limits import Limits, current_limits, human

DUPLICATE_SUFFIX = r"_duplicated_\d+$"
COMPRESSED_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz", ".zst", ".zip", ".7z")
SUFFIX_FORMATS = {
    ".csv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".ndjson": "fhir",
    ".jsonl": "fhir",
}


def format_from_suffix(path: Path) -> str:
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None and path.suffix.lower() in COMPRESSED_SUFFIXES:
        raise FileRejected(
            path, f"compressed extracts ({path.suffix}) are not accepted; decompress it into the landing folder first"
        )
    if fmt is None:
        raise FileRejected(
            path,
            f"cannot tell the format from the extension {path.suffix!r}; "
            f"name it .csv, .parquet or .ndjson, or pass --source",
        )
    return fmt


def read_csv(path: Path, keep: pl.Expr | None = None) -> tuple[pl.DataFrame, list[str], int]:
    """(canonical frame of the rows satisfying `keep`, ignored columns, rows skipped)."""
    try:
        raw = pl.scan_csv(
            path,
            infer_schema=False,
            encoding="utf8-lossy",
            raise_if_empty=True,
            truncate_ragged_lines=False,
            row_index_name="source_row",
            row_index_offset=1,
            glob=False,  # a file name with [ ] or * is a name, not a pattern
        )
        header = [c for c in raw.collect_schema().names() if c != "source_row"]
        # Polars renames a repeated header to <name>_duplicated_<n>; the second copy would be dropped unseen.
        repeated = sorted({re.sub(DUPLICATE_SUFFIX, "", c) for c in header if re.search(DUPLICATE_SUFFIX, c)})
        if repeated:
            raise FileRejected(path, f"duplicate column name(s) in the header: {column_names(repeated)}")
        frame, ignored = canonicalise(raw, path)
        kept, skipped = collect_kept(frame, keep, whole=path.stat().st_size <= ingest.ONE_PASS_MAX_BYTES)
    except pl.exceptions.NoDataError:
        raise FileRejected(path, "the file is empty (no header row)") from None
    except (pl.exceptions.ComputeError, pl.exceptions.PolarsError) as exc:
        raise FileRejected(path, f"not a readable CSV file: {csv_problem(path) or scrub(exc)}") from None
    return kept, ignored, skipped


CSV_ERRORS = {
    "unexpected end of data": "an unclosed quote: the file ends inside a quoted value",
    "expected after": 'a quote inside a quoted value is not doubled ("")',
    "field larger than field limit": "a value is longer than the field limit",
    "line contains nul": "a NUL byte",
}


def column_names(names: list[str]) -> str:
    """Header names fit to quote in a message: contract columns by name, any other only counted (in a
    file without a header, the first row's values are read as the header: patient data)."""
    known = set(load_contract().names)
    named = [n for n in names if n.strip().lower() in known]
    others = len(names) - len(named)
    return ", ".join(named + ([f"{others} other(s), not contract columns"] if others else []))


def csv_problem(path: Path, delimiter: str = ",") -> str | None:
    """Where a CSV breaks, by data row, never quoting a value (Polars' messages quote the row: PHI).

    Only runs after Polars refused the file, so the per-row Python here is off the hot path.
    """
    csv.field_size_limit(max(current_limits().max_field_bytes * 4, 1 << 17))
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, strict=True, delimiter=delimiter)
        row = 0
        try:
            header = next(reader, None)
            if header is None:
                return "the file is empty (no header row)"
            for row, fields in enumerate(reader, 1):
                if fields and len(fields) > len(header):
                    return f"data row {row} has {len(fields)} fields, the header has {len(header)}"
        except csv.Error as exc:
            text = str(exc).lower()
            what = next((v for k, v in CSV_ERRORS.items() if k in text), "not valid CSV")
            return f"{'header row' if row == 0 and reader.line_num <= 1 else f'data row {row + 1}'}: {what}"
    return None


def scrub(exc: Exception) -> str:
    """The first line of a reader error with every quoted excerpt (`...`, '...', "...") removed and
    anything after a colon dropped: Polars and pyarrow quote row values there ("could not parse '...'")."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    first = re.sub(r"`[^`]*`?|'[^']*'?|\"[^\"]*\"?", "...", first)
    return first.split(":", 1)[0][:120] or type(exc).__name__


def _as_text(frame: pl.LazyFrame, time_zone: str) -> pl.LazyFrame:
    """Typed Parquet columns -> the same text a CSV would carry (ISO dates and times).

    A time-zone-typed timestamp is an instant: it is written in the site's `time_zone`, with its
    offset, so its date is the site's local date (a 22:30 EST dose stored as 03:30 UTC keeps its
    date of service). A timestamp without a zone is a wall-clock time and is written as it is."""
    exprs = []
    for name, dtype in frame.collect_schema().items():
        if name == "source_row":
            exprs.append(pl.col(name))
            continue
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone:
                exprs.append(col.dt.convert_time_zone(time_zone).dt.to_string("%Y-%m-%dT%H:%M:%S%:z").alias(name))
            else:
                exprs.append(col.dt.to_string("%Y-%m-%dT%H:%M:%S").alias(name))
        elif dtype == pl.Date:
            exprs.append(col.dt.to_string("%Y-%m-%d").alias(name))
        elif dtype in (pl.List, pl.Struct) or isinstance(dtype, (pl.List, pl.Struct, pl.Array)):
            exprs.append(pl.lit(None, dtype=pl.String).alias(name))
        else:
            exprs.append(col.cast(pl.String).alias(name))
    return frame.select(exprs)


def parquet_problem(meta: pq.FileMetaData, limits: Limits) -> str | None:
    """A Parquet file too large once decoded, from its footer alone (a small file can inflate a lot)."""
    if meta.num_rows > limits.max_rows:
        return f"{meta.num_rows:,} rows, over the limit of {limits.max_rows:,} (B12_MAX_ROWS)"
    decoded = sum(
        meta.row_group(i).column(j).total_uncompressed_size
        for i in range(meta.num_row_groups)
        for j in range(meta.num_columns)
    )
    if decoded > limits.max_decoded_bytes:
        return (
            f"{decoded:,} bytes once decompressed, over the limit of {human(limits.max_decoded_bytes)} "
            f"(B12_MAX_DECODED_BYTES)"
        )
    return None


def dictionary_problem(path: Path, limits: Limits) -> str | None:
    """Dictionary-encoded text inflates past its pages (one long value repeated per row): measure it
    while it is still a dictionary, before anything decodes it."""
    schema = pq.read_metadata(path).schema
    text = [
        c.path
        for c in (schema.column(i) for i in range(len(schema)))
        if c.physical_type in ("BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY") and "." not in c.path
    ]
    if not text:
        return None
    table = pq.read_table(path, columns=text, read_dictionary=text)
    decoded = 0
    for column in table.columns:
        for chunk in column.chunks:
            if pa.types.is_dictionary(chunk.type):
                lengths = pc.binary_length(chunk.dictionary)
                decoded += pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0
            else:
                decoded += chunk.nbytes
    if decoded > limits.max_decoded_bytes:
        return (
            f"{decoded:,} bytes of text once decoded, over the limit of {human(limits.max_decoded_bytes)} "
            f"(B12_MAX_DECODED_BYTES)"
        )
    return None


def read_parquet(
    path: Path, keep: pl.Expr | None = None, time_zone: str = SiteConfig.time_zone
) -> tuple[pl.DataFrame, list[str], int]:
    """(canonical frame of the rows satisfying `keep`, ignored columns, rows skipped); zoned
    timestamps are written in `time_zone`, the site's (rules/site.yaml)."""
    limits = current_limits()
    try:
        problem = parquet_problem(pq.read_metadata(path), limits) or dictionary_problem(path, limits)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet or damaged file
        raise FileRejected(path, f"not a readable Parquet file: {scrub(exc)}") from None
    if problem:
        raise FileRejected(path, problem)
    try:
        raw = pl.scan_parquet(path, row_index_name="source_row", row_index_offset=1, glob=False)
        contract = set(load_contract().names)
        nested = [
            name
            for name, dtype in raw.collect_schema().items()
            if name.strip().lower() in contract and isinstance(dtype, (pl.List, pl.Struct, pl.Array))
        ]
        if nested:  # read as nulls, a B12 row would silently count as out of scope
            raise FileRejected(
                path,
                f"column(s) {', '.join(n.strip().lower() for n in nested)} hold lists or structs; "
                f"contract columns must be text, numbers, dates or times",
            )
        frame, ignored = canonicalise(_as_text(raw, time_zone), path)
        kept, skipped = collect_kept(frame, keep)
    except FileRejected:
        raise
    except pl.exceptions.PanicException:  # a BaseException: Polars' reader stopped on damaged pages
        raise FileRejected(path, "not a readable Parquet file: its data pages are damaged") from None
    except Exception as exc:  # pyarrow and polars raise several types for a non-Parquet file
        raise FileRejected(path, f"not a readable Parquet file: {scrub(exc)}") from None
    return kept, ignored, skipped
