"""Operational limits on input files: a bad or hostile extract is refused within bounded memory.

These belong to the run, not to the ruleset (they never change a finding, so they stay out of the
ruleset hash): defaults here, overridden per run by environment variables. docs/reliability.md
lists them.

    B12_MAX_FILE_BYTES     largest extract file accepted, on disk            (default 1G)
    B12_MAX_FIELD_BYTES    longest single value in a contract column         (default 4K)
    B12_MAX_ROWS           most data rows in one file                        (default 10M)
    B12_MAX_DECODED_BYTES  Parquet: largest decoded (uncompressed) size      (default 4G)

Sizes accept a K, M or G suffix (powers of 1024). Compressed files (gzip, bzip2, xz, zstd, zip)
are not accepted at all: Polars would inflate a gzip CSV in memory before any limit could apply.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

# Leading bytes of compression formats. Parquet starts with b"PAR1", CSV with text: no overlap.
COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}
# Formats whose files are legitimately zip containers (none today; an xlsx reader would add "xlsx").
ZIP_CONTAINER_FORMATS: frozenset[str] = frozenset({"xlsx"})


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 1 << 30
    max_field_bytes: int = 4 << 10
    max_rows: int = 10_000_000
    max_decoded_bytes: int = 4 << 30


ENV = {
    "max_file_bytes": "B12_MAX_FILE_BYTES",
    "max_field_bytes": "B12_MAX_FIELD_BYTES",
    "max_rows": "B12_MAX_ROWS",
    "max_decoded_bytes": "B12_MAX_DECODED_BYTES",
}


def parse_size(text: str, name: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, flags=re.IGNORECASE)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{name}={text!r} is not a positive size (e.g. 4096, 512M, 2G)")
    return int(match.group(1)) * _SUFFIX[match.group(2).upper()]


def current_limits() -> Limits:
    """The limits for this run: defaults, overridden by the B12_MAX_* environment variables."""
    values = {key: parse_size(os.environ[var], var) for key, var in ENV.items() if os.environ.get(var)}
    return Limits(**values)


def human(n: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n:,} bytes"


def compression_of(path: Path) -> str | None:
    """The compression format a file starts with, if any (by content: the extension can lie)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    return next((name for magic, name in COMPRESSED_MAGIC.items() if head.startswith(magic)), None)


def file_problem(path: Path, fmt: str, limits: Limits) -> str | None:
    """Why a file must not be read at all (too large, compressed), checked before reading it."""
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        return (
            f"the file is {size:,} bytes, over the limit of {human(limits.max_file_bytes)} "
            f"(B12_MAX_FILE_BYTES); split the extract or raise the limit"
        )
    packed = compression_of(path)
    if packed and not (packed == "zip" and fmt in ZIP_CONTAINER_FORMATS):
        return (
            f"the file is {packed}-compressed; compressed extracts are not accepted "
            f"(decompress it into the landing folder first)"
        )
    return None


def frame_problem(frame: pl.DataFrame, columns: list[str], limits: Limits) -> str | None:
    """Too many rows for one file."""
    if frame.height > limits.max_rows:
        return f"{frame.height:,} data rows, over the limit of {limits.max_rows:,} (B12_MAX_ROWS)"
    return None


LONG_VALUE_CHECK = "value_within_length_limit"


def long_values(
    frame: pl.DataFrame, columns: list[str], limits: Limits, delimiter: str | None
) -> tuple[pl.Series | None, str | None]:
    """Values longer than max_field_bytes: (per-row quarantine reason, null where fine; or None when
    there are none, file problem). Named by data row and column, never by value.

    One long value is that row's problem: the row is quarantined and the rest of the file read. A
    long value holding line breaks or the file's delimiter is the mark of a quoting error (an
    unclosed quote swallowing the rows or fields after it): the file is rejected, saying which."""
    present = [c for c in columns if c in frame.columns and frame.schema[c] == pl.String]
    if not present or frame.height == 0:
        return None, None
    longest = frame.select(pl.col(present).str.len_bytes().max()).row(0)
    over = [c for c, n in zip(present, longest, strict=True) if n is not None and n > limits.max_field_bytes]
    if not over:
        return None, None
    limit = f"over the limit of {human(limits.max_field_bytes)} (B12_MAX_FIELD_BYTES)"
    marks = ["\n", "\r"] + ([delimiter] if delimiter else [])
    for name in over:
        too_long = pl.col(name).str.len_bytes() > limits.max_field_bytes
        swallowed = too_long & pl.any_horizontal(pl.col(name).str.contains(m, literal=True) for m in marks)
        first = frame.select(pl.arg_where(swallowed).first()).item()
        if first is not None:
            row = frame["source_row"][first] if "source_row" in frame.columns else first + 1
            value = frame[name][first]
            held = "line breaks" if ("\n" in value or "\r" in value) else f"the delimiter {delimiter!r}"
            return None, (
                f"data row {row}, column {name}: a value {limit} holding {held}: "
                f"most likely an unclosed quote that swallowed the rows or fields after it"
            )
    reasons = frame.select(
        pl.concat_list(
            pl.when(pl.col(c).str.len_bytes() > limits.max_field_bytes).then(pl.lit(f"{c}: a value {limit}"))
            for c in over
        )
        .list.drop_nulls()
        .list.join("; ")
        .alias("r")
    )["r"]
    return pl.select(pl.when(reasons != "").then(reasons)).to_series().alias("r"), None
