"""Write a canonical (all-text) frame as any supported source format: the readers' inverse.

Used by `b12pipeline synth` and by the fixture builder, so the same administrations exist as a
canonical CSV, typed Parquet, a Clarity-style CSV and FHIR NDJSON. Each writer refuses a value its
format cannot carry (e.g. a route the Clarity map has no code for) instead of writing a different one.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from b12pipeline.archive import LABELS_SUFFIX
from b12pipeline.fhir_writer import write_fhir
from b12pipeline.fhirbulk_writer import write_fhir_bulk
from b12pipeline.ingest.mapping import load_mapping

FORMATS = ("csv", "parquet", "clarity", "fhir", "fhir-bulk")


def write_extract(frame: pl.DataFrame, fmt: str, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = frame.with_columns(
        pl.when(pl.col(pl.String).str.strip_chars() == "").then(None).otherwise(pl.col(pl.String)).name.keep()
    )  # "" = empty, as the readers say
    if fmt == "csv":
        frame.write_csv(path)
    elif fmt == "parquet":
        typed(frame).write_parquet(path)
    elif fmt == "clarity":
        to_clarity(frame).write_csv(path, separator=load_mapping("clarity").delimiter)
    elif fmt == "fhir":
        write_fhir(frame, path)
    elif fmt == "fhir-bulk":
        write_fhir_bulk(frame, path)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return path


def typed(frame: pl.DataFrame) -> pl.DataFrame:
    """Parquet carries the contract's logical types (timestamps, dates, decimals, integers)."""
    num = {
        c: pl.col(c).str.replace_all(",", "").cast(pl.Float64, strict=False)
        for c in ("dose_value", "concentration_mcg_per_ml", "container_volume_ml", "waste_mcg", "charge_ndc_qty")
        if c in frame.columns
    }
    return frame.with_columns(
        pl.col("admin_time").str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False),
        pl.coalesce(
            pl.col("expiration_date").str.strptime(pl.Date, "%Y-%m-%d", strict=False),
            (pl.col("expiration_date") + "-01").str.strptime(pl.Date, "%Y-%m-%d", strict=False).dt.month_end(),
        ).alias("expiration_date"),  # YYYY-MM means its last day
        pl.col("charge_units").cast(pl.Int64, strict=False),
        *[e.alias(c) for c, e in num.items()],
    )


# --- Clarity-style ------------------------------------------------------------------------------


def _norm(value: pl.Expr) -> pl.Expr:
    return value.str.to_lowercase().str.strip_chars().str.replace(r"s$", "")


def to_clarity(frame: pl.DataFrame, mapping_name: str = "clarity") -> pl.DataFrame:
    """Canonical -> the mapping's source columns and codes. ORDER_MED_ID and LINE come from admin_id
    (ORDER_MED_ID-LINE), so order_id is not written separately."""
    mapping = load_mapping(mapping_name)
    parts = pl.col("admin_id").str.extract_groups(r"^(.*)-([^-]+)$")
    exprs: dict[str, pl.Expr] = {}
    derived = mapping.derived["admin_id"]["join"]
    exprs[derived[0]] = parts.struct.field("1")
    exprs[derived[1]] = parts.struct.field("2")
    for src, canon in mapping.columns.items():
        if src in exprs or canon not in frame.columns:
            continue
        value = pl.col(canon)
        if canon in mapping.values:
            inverse: dict[str, str] = {}
            for code, name in mapping.values[canon].map.items():
                inverse.setdefault(re.sub(r"s$", "", name.lower().strip()), code)
            coded = _norm(value).replace_strict(inverse, default=None, return_dtype=pl.String)
            if mapping.values[canon].unknown == "keep":  # the reader passes unlisted values through
                coded = pl.coalesce(coded, value)
            bad = frame.filter(value.is_not_null() & coded.is_null())
            if bad.height:
                raise ValueError(f"{canon} value {bad[canon][0]!r} has no code in {mapping.path.name} values.{canon}")
            value = coded
        if canon == "admin_time":
            value = pl.coalesce(
                value.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False).dt.strftime(
                    mapping.dates[canon]["formats"][0]
                ),
                value,
            )
        elif canon == "expiration_date":
            value = pl.coalesce(
                value.str.strptime(pl.Date, "%Y-%m-%d", strict=False).dt.strftime("%m/%d/%Y"),
                (value + "-01").str.strptime(pl.Date, "%Y-%m-%d", strict=False).dt.strftime("%m/%Y"),
                value,
            )
        exprs[src] = value
    return frame.select([e.alias(c) for c, e in exprs.items()])


# --- FHIR R4 NDJSON -----------------------------------------------------------------------------


def labels_path(path: Path | str) -> Path:
    """Where synth writes the expected findings: <PATH>.labels.parquet."""
    path = Path(path)
    return path.with_name(path.name + LABELS_SUFFIX)
