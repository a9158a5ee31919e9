"""Normalise: the contract's normalisation, every derived column once, vectorised.

Input is the canonical (all-text) frame of valid B12 rows; output is the facts frame the rules read.
Typed contract columns are replaced by their typed values (dose_value, charge_units, admin_time,
expiration_date, ...); the derived columns below are added. Each derivation is one named function
so a test can pin it; docs/columns.md lists them.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from b12pipeline.engine.settings import SiteConfig
from b12pipeline.reference import Reference

B12_NAME_PATTERN = r"(?i)cyanocobalamin|hydroxocobalamin|methylcobalamin|vitamin\s*b\s*-?\s*12\b"

MCG_UNITS = ["mcg", "ug", "µg", "μg", "microgram", "micrograms", "mcgs"]
MG_UNITS = ["mg", "milligram", "milligrams", "mgs"]
G_UNITS = ["g", "gm", "gram", "grams"]  # Cyanokit is labeled 5 g
ML_UNITS = ["ml", "milliliter", "milliliters", "millilitre", "millilitres", "mls"]

ROUTE_CLASSES = {
    "injectable": [
        "im",
        "intramuscular",
        "sc",
        "sq",
        "subq",
        "sub-q",
        "subcut",
        "subcutaneous",
        "deep sc",
        "deep subcut",
        "deep subcutaneous",
        "intramuscular injection",
        "subcutaneous injection",
    ],
    "intravenous": ["iv", "iv push", "ivp", "intravenous", "intravenous push", "iv piggyback", "iv infusion"],
    "self_administered": ["intranasal", "nasal", "oral", "po", "sublingual", "sl", "by mouth"],
}

_TIMESTAMP_LOCAL = r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?)"
# _TIMESTAMP_LOCAL's match when it has seconds and no fraction (whatever follows is not read).
_TIMESTAMP_SECONDS = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:[^.]|$)"
_UTC_OFFSET = r"[0-9](Z|[+-][0-9]{2}:?[0-9]{2})$"  # after the time's last digit (the date has "-" too)


def _blank_to_null(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr == "").then(None).otherwise(expr)


# --- parsing shared with validate --------------------------------------------------------------


def local_timestamp(col: str = "admin_time") -> pl.Expr:
    """The wall-clock time as written (offset dropped): the date of service is its calendar date."""
    value = pl.col(col)
    # Most times are written YYYY-MM-DD[T ]HH:MM:SS without a fraction: those are parsed straight
    # from their first 19 characters (several times cheaper), and the general parse below reads
    # only the other rows (the common ones reach it as null, which costs nothing).
    common = value.str.contains(_TIMESTAMP_SECONDS).fill_null(False)
    head = value.str.slice(0, 19)
    seconds = pl.coalesce(
        head.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False),
        head.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False),
    )
    parts = pl.when(common).then(None).otherwise(value).str.extract_groups(_TIMESTAMP_LOCAL)
    text = pl.concat_str(parts.struct.field("1"), pl.lit(" "), parts.struct.field("2"))
    general = pl.coalesce(
        text.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S%.f", strict=False),
        text.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False),
        text.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M", strict=False),
    )
    return pl.when(common).then(seconds).otherwise(general)


def utc_offset_minutes(col: str = "admin_time") -> pl.Expr:
    """The UTC offset written after the time, in minutes east of UTC (`Z` is 0); null when none is written."""
    # The offset and the digit before it are at most 7 characters at the end: the pattern is run on
    # those only (an end-anchored search over the whole text costs several times more).
    text = pl.col(col).str.slice(-7).str.extract(_UTC_OFFSET, 1)
    digits = text.str.replace_all(":", "", literal=True)
    size = digits.str.slice(1, 2).cast(pl.Int64, strict=False) * 60 + digits.str.slice(3, 2).cast(
        pl.Int64, strict=False
    )
    return pl.when(text == "Z").then(0).when(digits.str.starts_with("-")).then(-size).otherwise(size)


def instant(local: pl.Expr, offset_minutes: pl.Expr, time_zone: str) -> pl.Expr:
    """The moment (UTC) of a wall-clock time: with the offset written beside it when there is one,
    else read in the site's time zone. A local time that a DST change repeats (fall back) or skips
    (spring forward) is read with the offset in force before the change, as Python's zoneinfo
    does for fold=0: the first 01:30 of a repeated hour; a skipped 02:30 as 03:30 after it."""
    written = (local - pl.duration(minutes=offset_minutes)).dt.replace_time_zone("UTC")
    zoned = local.dt.replace_time_zone(time_zone, ambiguous="earliest", non_existent="null")
    # Only a skipped time is null above: a day earlier the clock had the offset before the change.
    day_before = (local - pl.duration(days=1)).dt.replace_time_zone(
        time_zone, ambiguous="earliest", non_existent="null"
    )
    site = pl.coalesce(
        zoned.dt.convert_time_zone("UTC"), day_before.dt.convert_time_zone("UTC") + pl.duration(hours=24)
    )
    return pl.when(offset_minutes.is_not_null()).then(written).otherwise(site)


def expiry_date(col: str = "expiration_date") -> pl.Expr:
    """YYYY-MM-DD as is; YYYY-MM (month/year on a vial) = the last day of that month."""
    full = pl.col(col).str.strptime(pl.Date, "%Y-%m-%d", strict=False)
    month = (pl.col(col) + "-01").str.strptime(pl.Date, "%Y-%m-%d", strict=False).dt.month_end()
    return pl.when(pl.col(col).str.len_chars() == 7).then(month).otherwise(full)


def number(col: str) -> pl.Expr:
    """Decimal text -> Float64; "1,000" thousands separators allowed; anything else null.
    "-0" is 0 (adding 0.0 turns IEEE negative zero into zero, so it never shows as "-0")."""
    return pl.col(col).str.replace_all(",", "", literal=True).cast(pl.Float64, strict=False) + 0.0


def positive(expr: pl.Expr) -> pl.Expr:
    """A quantity that divides or scales a dose: zero, negative or non-finite means unknown."""
    return pl.when((expr > 0) & expr.is_finite()).then(expr).otherwise(None)


def enum_text(col: str) -> pl.Expr:
    """An enumerated value compared case- and whitespace-insensitively: trimmed, inner runs of
    whitespace as one space, lower case; empty is null."""
    text = pl.col(col).str.replace_all(r"\s+", " ").str.strip_chars().str.to_lowercase()
    return pl.when(text == "").then(None).otherwise(text)


# --- NDC ----------------------------------------------------------------------------------------


_NDC_HYPHENATED = r"^([0-9]{4,6})-([0-9]{3,4})-([0-9]{1,2})$"
# Label shapes that pad to 5-4-2 unambiguously (the padded segment is the short one). A 6-digit
# labeler is a zero-padded 5-digit one (000406-0522-05): its leading zero is dropped first.
_NDC_SHAPES = ["442", "532", "541", "542", "642", "641", "632", "631"]


def _ndc_text(col: str) -> pl.Expr:
    """The NDC as written, without whitespace, `*` placeholders read as 0 (054868-5338-*3)."""
    return pl.col(col).str.replace_all(r"\s+", "").str.replace_all("*", "0", literal=True)


def _ndc_segments(col: str) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    """(labeler, product, package, shape) of a hyphenated NDC; shape is the segment lengths ("642")."""
    seg = _ndc_text(col).str.extract_groups(_NDC_HYPHENATED)
    a, b, c = (seg.struct.field(str(i)) for i in (1, 2, 3))
    shape = pl.concat_str(
        a.str.len_chars().cast(pl.String), b.str.len_chars().cast(pl.String), c.str.len_chars().cast(pl.String)
    )
    return a, b, c, shape


def ndc_parts(col: str = "ndc") -> tuple[pl.Expr, pl.Expr]:
    """(ndc11, ndc_status): status is empty | valid | ambiguous (ten bare digits) | malformed.

    Accepted: hyphenated 4-4-2, 5-3-2, 5-4-1, 5-4-2; the same with a zero-padded 6-digit labeler
    (6-4-2, 6-4-1, 6-3-2, 6-3-1); `*` as a placeholder digit 0; 11 bare digits; 12 bare digits with a
    leading zero. Ten bare digits stay ambiguous: which segment is short cannot be known.
    """
    s = _ndc_text(col)
    a, b, c, shape = _ndc_segments(col)
    six_ok = (a.str.len_chars() < 6) | a.str.starts_with("0")
    hyphen_ok = shape.is_in(_NDC_SHAPES) & six_ok
    padded = pl.concat_str(a.str.slice(-5).str.zfill(5), b.str.zfill(4), c.str.zfill(2))
    bare11 = s.str.contains(r"^[0-9]{11}$")
    bare12 = s.str.contains(r"^0[0-9]{11}$")
    bare10 = s.str.contains(r"^[0-9]{10}$")
    ndc11 = pl.when(hyphen_ok).then(padded).when(bare11).then(s).when(bare12).then(s.str.slice(1)).otherwise(None)
    status = (
        pl.when(pl.col(col).is_null() | (s == ""))
        .then(pl.lit("empty"))
        .when(hyphen_ok | bare11 | bare12)
        .then(pl.lit("valid"))
        .when(bare10)
        .then(pl.lit("ambiguous"))
        .otherwise(pl.lit("malformed"))
    )
    return ndc11, status


def ndc_form(col: str = "ndc") -> pl.Expr:
    """The form the NDC was written in, for the coder: "6-4-2", "11 digits", "6-4-2 with *", "other"."""
    s = pl.col(col).str.replace_all(r"\s+", "")
    _, _, _, shape = _ndc_segments(col)
    hyphenated = pl.concat_str(
        shape.str.slice(0, 1), pl.lit("-"), shape.str.slice(1, 1), pl.lit("-"), shape.str.slice(2, 1)
    )
    form = (
        pl.when(shape.is_not_null())
        .then(hyphenated)
        .when(_ndc_text(col).str.contains(r"^[0-9]+$"))
        .then(pl.concat_str(s.str.len_chars().cast(pl.String), pl.lit(" digits")))
        .otherwise(pl.lit("other"))
    )
    placeholder = (
        pl.when(shape.is_not_null() & s.str.contains("*", literal=True)).then(pl.lit(" with *")).otherwise(pl.lit(""))
    )
    return pl.when(s.is_null() | (s == "")).then(None).otherwise(pl.concat_str(form, placeholder))


# --- scope --------------------------------------------------------------------------------------


def b12_scope(ref: Reference) -> pl.Expr:
    """A B12 row: NDC in the reference, or a known B12 RxNorm code, or a B12 medication name."""
    ndc11, _ = ndc_parts()
    return (
        ndc11.is_in(ref.ndcs.implode()).fill_null(False)
        | pl.col("rxnorm_code").is_in(ref.rxnorm["rxnorm_code"].implode()).fill_null(False)
        | pl.col("medication_name").str.contains(B12_NAME_PATTERN).fill_null(False)
    )


def name_ingredient() -> pl.Expr:
    """Ingredient named in medication_name; RxNorm's "vitamin B12" is cyanocobalamin."""
    name = pl.col("medication_name").str.to_lowercase()
    return (
        pl.when(name.str.contains("hydroxocobalamin"))
        .then(pl.lit("hydroxocobalamin"))
        .when(name.str.contains("methylcobalamin"))
        .then(pl.lit("methylcobalamin"))
        .when(name.str.contains("cyanocobalamin"))
        .then(pl.lit("cyanocobalamin"))
        .when(name.str.contains(r"vitamin\s*b\s*-?\s*12\b"))
        .then(pl.lit("cyanocobalamin"))
        .otherwise(None)
    )


def route_class() -> pl.Expr:
    route = enum_text("route")
    expr: Any = pl.when(False).then(None)  # a chain of when/then, closed by otherwise
    for klass, spellings in ROUTE_CLASSES.items():
        expr = expr.when(route.is_in(spellings)).then(pl.lit(klass))
    return expr.otherwise(pl.lit("unknown"))


def code_list(col: str) -> pl.Expr:
    """Upper-cased codes split on ',' ';' or whitespace."""
    return (pl.col(col).fill_null("").str.to_uppercase().str.replace_all(r"[,;\s]+", ",").str.split(",")).list.eval(
        pl.element().filter(pl.element() != "")
    )


def icd10_dotted(col: str = "diagnosis_codes") -> pl.Expr:
    """Upper-cased ICD-10-CM codes with the dot after the third character (D510 -> D51.0)."""
    return code_list(col).list.eval(
        pl.when((pl.element().str.len_chars() > 3) & ~pl.element().str.contains(r"\.", literal=False))
        .then(pl.concat_str(pl.element().str.slice(0, 3), pl.lit("."), pl.element().str.slice(3)))
        .otherwise(pl.element())
    )


def icd10_billable(code: str) -> bool:
    """A valid ICD-10-CM code that is billable (a leaf), per simple-icd-10-cm (b12pipeline/icd10.py)."""
    from b12pipeline.icd10 import is_billable

    return is_billable(code)


def npi_valid(col: str = "ordering_provider_npi") -> pl.Expr:
    """10 digits whose last is the Luhn check digit over "80840" + the first nine (constant 24)."""
    s = pl.col(col)
    digit = [s.str.slice(i, 1).cast(pl.Int32, strict=False) for i in range(10)]

    def doubled(d: pl.Expr) -> pl.Expr:
        return pl.when(d * 2 > 9).then(d * 2 - 9).otherwise(d * 2)

    total = pl.lit(24, dtype=pl.Int32)
    for i in range(9):  # d1..d9; d9, d7, d5, d3, d1 (even indices) are doubled
        total = total + (doubled(digit[i]) if i % 2 == 0 else digit[i])
    check = (10 - total % 10) % 10
    return (s.str.contains(r"^[0-9]{10}$") & (check == digit[9])).fill_null(False)


# --- the facts frame ----------------------------------------------------------------------------


def lookup(frame: pl.DataFrame, on: str | list[str], table: pl.DataFrame, nulls_equal: bool = True) -> list[pl.Series]:
    """`table`'s other columns for each row of `frame`, in row order (null where the key is not in it).

    Only the key columns are joined, never the whole frame: a join gathers every column it carries,
    and the facts frame has about 90 (a join of all of them per derivation was most of this step's
    time and memory at a million rows). `table` has one row per key.
    """
    keys = [on] if isinstance(on, str) else on
    found = frame.select(keys).join(table, on=keys, how="left", nulls_equal=nulls_equal, maintain_order="left")
    return found.drop(keys).get_columns()


def one_chunk_in_place(frame: pl.DataFrame, columns: list[str]) -> None:
    """Make `columns` of `frame` one chunk each, in place: their values do not change, and the
    chunked copies are freed as soon as nothing else holds them. A rechunked copy of the frame
    would keep both in memory while the caller holds the original (a year of history: ~300 MB)."""
    for name in columns:
        index = frame.get_column_index(name)
        if frame.to_series(index).n_chunks() > 1:
            frame.replace_column(index, frame.to_series(index).rechunk())


def distinct_values(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """The distinct values of one column (null included), as a one-column frame: a few times
    cheaper than DataFrame.unique at a million rows."""
    return frame.get_column(column).unique().to_frame()


def by_value(frame: pl.DataFrame, column: str, derived: dict[str, pl.Expr]) -> list[pl.Series]:
    """`derived` columns computed once per distinct value of `column`, in `frame`'s row order.

    Codes, units, routes, modifiers and diagnoses take a few hundred distinct values in a million
    rows: deriving on the distinct values and joining is several times cheaper than regexes per row.
    """
    return lookup(frame, column, distinct_values(frame, column).with_columns(**derived))


def per_value(frame: pl.DataFrame, column: str, parsed: pl.Expr) -> pl.Series:
    """`column` replaced by `parsed`, computed once per distinct value (as by_value)."""
    (values,) = by_value(frame, column, {"_parsed": parsed})
    return values.alias(column)


def dx_facts(cfg: SiteConfig, codes: pl.DataFrame) -> pl.DataFrame:
    """Per distinct diagnosis_codes text: dx_codes (list), dx_count, dx_invalid (";"-joined codes that
    are not billable ICD-10-CM, or null), dx_covered (any code matches a covered prefix)."""
    table = distinct_values(codes, "diagnosis_codes").with_columns(icd10_dotted().alias("dx_codes"))
    exploded = (
        table.select("diagnosis_codes", pl.col("dx_codes").alias("code"))
        .explode("code")
        .filter(pl.col("code").is_not_null())
    )
    distinct = exploded.select("code").unique()
    distinct = distinct.with_columns(
        pl.Series("billable", [icd10_billable(c) for c in distinct["code"].to_list()], dtype=pl.Boolean),
        (
            pl.any_horizontal([pl.col("code").str.starts_with(p) for p in cfg.covered_dx_prefixes])
            if cfg.covered_dx_prefixes
            else pl.lit(False)
        ).alias("covered"),
    )
    per_text = (
        exploded.join(distinct, on="code", how="left")
        .group_by("diagnosis_codes")
        .agg(pl.col("code").filter(~pl.col("billable")).alias("_invalid"), pl.col("covered").any().alias("dx_covered"))
    )
    per_text = per_text.with_columns(
        pl.when(pl.col("_invalid").list.len() > 0)
        .then(pl.col("_invalid").list.join(";"))
        .otherwise(None)
        .alias("dx_invalid")
    ).drop("_invalid")
    return table.join(per_text, on="diagnosis_codes", how="left", nulls_equal=True).with_columns(
        pl.col("dx_covered").fill_null(False), pl.col("dx_codes").list.len().cast(pl.Int64).alias("dx_count")
    )


def facts(valid: pl.DataFrame, ref: Reference, cfg: SiteConfig) -> pl.DataFrame:
    """The facts frame: one row per valid B12 administration, every derived column computed once.

    `valid`'s columns that the facts keep unchanged are made one chunk in place (same values)."""
    products = ref.products.select(
        pl.col("ndc11"),
        pl.col("ingredient").alias("ref_ingredient"),
        pl.col("mcg_per_ml").alias("ref_mcg_per_ml"),
        pl.col("ml_per_container").alias("ref_ml_per_container"),
        pl.col("container_type").alias("ref_container_type"),
    )
    rx = ref.rxnorm.rename({"ingredient": "rx_ingredient"})
    ndc11, ndc_status = ndc_parts()
    ndc_table = (
        distinct_values(valid, "ndc")
        .with_columns(ndc11.alias("ndc11"), ndc_status.alias("ndc_status"), ndc_form().alias("ndc_form"))
        .join(products, on="ndc11", how="left")
    )
    unit = enum_text("dose_unit").str.replace(r"s$", "")
    em = pl.col("em_codes")
    # Typed values of the contract's text columns, which they replace.
    typed = (
        valid.lazy()
        .select(
            local_timestamp().alias("admin_time"),
            number("dose_value").alias("dose_value"),
            # A zero concentration or volume is unknown, like an empty one (docs/decisions.md).
            positive(number("concentration_mcg_per_ml")).alias("concentration_mcg_per_ml"),
            positive(number("container_volume_ml")).alias("container_volume_ml"),
            number("waste_mcg").alias("waste_mcg"),
            number("charge_ndc_qty").alias("charge_ndc_qty"),
            pl.col("charge_units").cast(pl.Int64, strict=False).alias("charge_units"),
            utc_offset_minutes().alias("_offset"),
        )
        .collect()
        .rechunk()
    )
    # Codes and enumerations: a few distinct values each, so parsed once per value.
    coded = [
        per_value(valid, "charge_hcpcs", pl.col("charge_hcpcs").str.to_uppercase().str.strip_chars()),
        per_value(valid, "admin_cpt", pl.col("admin_cpt").str.to_uppercase().str.strip_chars()),
        per_value(valid, "charge_ndc_unit", enum_text("charge_ndc_unit").str.to_uppercase()),
        per_value(valid, "payer_type", enum_text("payer_type")),
        per_value(valid, "claim_type", enum_text("claim_type").fill_null("professional")),
        per_value(valid, "container_type", enum_text("container_type")),
        per_value(valid, "place_of_service", pl.col("place_of_service").str.zfill(2)),
    ]
    # Each lookup joins only its key column, never the whole frame (lookup()).
    looked_up = [
        *lookup(valid, "ndc", ndc_table),
        *lookup(valid, "rxnorm_code", rx.unique("rxnorm_code", keep="first"), nulls_equal=False),
        *lookup(valid, "diagnosis_codes", dx_facts(cfg, valid)),
        *by_value(
            valid, "mar_action", {"given": enum_text("mar_action").is_in(list(cfg.given_actions)).fill_null(False)}
        ),
        *by_value(valid, "medication_name", {"name_ingredient": name_ingredient()}),
        *by_value(valid, "route", {"route_class": route_class()}),
        *by_value(
            valid,
            "dose_unit",
            {
                "_unit": pl.when(unit.is_in(MCG_UNITS))
                .then(pl.lit("mcg"))
                .when(unit.is_in(MG_UNITS))
                .then(pl.lit("mg"))
                .when(unit.is_in(G_UNITS))
                .then(pl.lit("g"))
                .when(unit.is_in(ML_UNITS))
                .then(pl.lit("ml"))
                .otherwise(None)
            },
        ),
        *by_value(valid, "charge_modifiers", {"modifiers": code_list("charge_modifiers")}),
        *by_value(valid, "same_day_em_codes", {"em_codes": code_list("same_day_em_codes")}),
        *by_value(valid, "ordering_provider_npi", {"npi_valid": npi_valid()}),
        *by_value(valid, "expiration_date", {"_expiry": expiry_date()}),
    ]
    # History comes as one chunk per date file, and a frame whose columns are chunked differently
    # is realigned (copied) by every select, join and with_columns after this: that cost more than
    # all the derivations together at a million rows (365 chunks). The columns the facts keep as
    # they are are made one chunk in place (the text columns replaced above are not).
    replaced = {*typed.columns, *(c.name for c in coded), "expiration_date"}
    one_chunk_in_place(valid, [c for c in valid.columns if c not in replaced])
    df = (
        valid.drop([c for c in valid.columns if c in replaced])
        .with_columns(*looked_up, *typed.drop("_offset"), *coded, typed["_offset"])
        .with_columns(pl.col("_expiry").alias("expiration_date"))
    )
    new = [c for c in df.columns if c not in set(valid.columns)]
    df = df.select(*valid.columns, *new).with_columns(
        # The date of service is the local date as written; DUP-001 compares instants (crossrow.py).
        pl.col("admin_time").dt.date().alias("service_date"),
        instant(pl.col("admin_time"), pl.col("_offset"), cfg.time_zone).alias("admin_instant"),
    )
    given_container = pl.when(pl.col("container_type") == "unknown").then(None).otherwise(pl.col("container_type"))
    df = df.with_columns(
        pl.col("ref_ingredient").is_not_null().alias("ndc_in_reference"),
        pl.coalesce("ref_ingredient", "rx_ingredient", "name_ingredient").alias("ingredient"),
        pl.coalesce(given_container, "ref_container_type", pl.lit("unknown")).alias("container"),
        pl.coalesce("concentration_mcg_per_ml", positive(pl.col("ref_mcg_per_ml"))).alias("concentration"),
        pl.coalesce("container_volume_ml", positive(pl.col("ref_ml_per_container"))).alias("container_ml"),
        pl.col("charge_hcpcs").is_not_null().alias("charge_present"),
        pl.col("modifiers").list.contains("JW").alias("has_jw"),
        pl.col("modifiers").list.contains("JZ").alias("has_jz"),
        em.list.eval(pl.element().str.slice(0, 5) == "99211").list.any().alias("em_has_99211"),
        em.list.eval(
            pl.element().str.contains(r"^(9920[2-5]|9921[2-5])")
            & (pl.element().str.slice(0, 5) != "99211")
            & ~pl.element().str.contains(r"-25(-|$)")
        )
        .list.any()
        .alias("em_without_25"),
    )
    dose_mcg = (
        pl.when(pl.col("_unit") == "mcg")
        .then(pl.col("dose_value"))
        .when(pl.col("_unit") == "mg")
        .then(pl.col("dose_value") * 1000)
        .when(pl.col("_unit") == "g")
        .then(pl.col("dose_value") * 1_000_000)
        .when(pl.col("_unit") == "ml")
        .then(pl.col("dose_value") * pl.col("concentration"))
        .otherwise(None)
    )
    # A non-finite dose (a 400-digit typo parses to inf) is unknown, like a non-positive one.
    df = df.with_columns(
        pl.when((dose_mcg > 0) & dose_mcg.is_finite()).then(dose_mcg).otherwise(None).alias("dose_mcg")
    )
    code_map = cfg.code_for_ingredient
    expected_code = pl.col("ingredient").replace_strict(code_map, default=None, return_dtype=pl.String)
    df = df.with_columns(
        expected_code.alias("expected_code"),
        # strict=False: a dose beyond Int64 units (a typo like 1e23 mcg) gives unknown units, not a crash.
        (pl.col("dose_mcg") / 1000).ceil().cast(pl.Int64, strict=False).alias("expected_units"),
        (pl.col("dose_mcg") / pl.col("concentration")).round(4).alias("dose_ml"),
    )
    df = df.with_columns(
        antidote_use(cfg).alias("antidote_use"),
        dose_plus_waste_mcg().alias("dose_plus_waste_mcg"),
        unit_capacity_mcg().alias("unit_capacity_mcg"),
        ndc_qty_diff_ml().alias("ndc_qty_diff_ml"),
    )
    df = cms_facts(df, ref, cfg)
    return df.drop("rx_ingredient", "_unit", "_expiry", "_offset")


# --- CMS quarterly tables (cms.py): crosswalk and MUE facts; null where a table is not imported ----

NOC = "NOC"  # marks an NDC listed in the NOC crosswalk (billed under an unclassified code)


def cms_facts(df: pl.DataFrame, ref: Reference, cfg: SiteConfig) -> pl.DataFrame:
    """xwalk_listed / xwalk_hcpcs_ok / xwalk_codes (NDC-006), ndc_expected_units (UNITS-004),
    mue_value / mue_mai / mue_units / mue_check (MUE-001)."""
    asp, noc = ref.cms.get("asp_crosswalk"), ref.cms.get("noc_crosswalk")
    listed = []
    if asp is not None:
        listed.append(asp.frame.select("ndc11", "hcpcs"))
    if noc is not None:
        listed.append(noc.frame.select("ndc11", pl.lit(NOC).alias("hcpcs")))
    if listed:
        codes = pl.concat(listed).unique().group_by("ndc11").agg(pl.col("hcpcs").sort().alias("_codes"))
        df = df.with_columns(*lookup(df, "ndc11", codes, nulls_equal=False))
        ok = pl.col("_codes").list.contains(pl.col("charge_hcpcs")) | (
            pl.col("_codes").list.contains(NOC) & pl.col("charge_hcpcs").is_in(list(cfg.unclassified_codes))
        )
        shown = pl.col("_codes").list.eval(
            pl.when(pl.element() == NOC).then(pl.lit("an unclassified code (NOC crosswalk)")).otherwise(pl.element())
        )
        df = df.with_columns(
            pl.col("_codes").is_not_null().alias("xwalk_listed"),
            pl.when(pl.col("_codes").is_not_null()).then(ok.fill_null(False)).otherwise(None).alias("xwalk_hcpcs_ok"),
            shown.list.join(" or ").alias("xwalk_codes"),
        ).drop("_codes")
    else:
        df = df.with_columns(
            pl.lit(None, dtype=pl.Boolean).alias("xwalk_listed"),
            pl.lit(None, dtype=pl.Boolean).alias("xwalk_hcpcs_ok"),
            pl.lit(None, dtype=pl.String).alias("xwalk_codes"),
        )
    if asp is not None:
        units = asp.frame.select(
            "ndc11",
            pl.col("hcpcs").alias("charge_hcpcs"),
            pl.col("pkg_size").cast(pl.Float64, strict=False).alias("_pkg_size"),
            pl.col("bill_units").cast(pl.Float64, strict=False).alias("_bill_units"),
            pl.col("bill_units_pkg").cast(pl.Float64, strict=False).alias("_bill_units_pkg"),
        ).unique(["ndc11", "charge_hcpcs"], keep="first")
        df = df.with_columns(*lookup(df, ["ndc11", "charge_hcpcs"], units, nulls_equal=False))
        # ML: mL given x billing units per mL of the item (BILLUNITS / PKG SIZE); UN: packages x BILLUNITSPKG.
        raw = (
            pl.when(pl.col("charge_ndc_unit") == "ML")
            .then(pl.col("charge_ndc_qty") * pl.col("_bill_units") / positive(pl.col("_pkg_size")))
            .when(pl.col("charge_ndc_unit") == "UN")
            .then(pl.col("charge_ndc_qty") * pl.col("_bill_units_pkg"))
            .otherwise(None)
        )
        expected = pl.when(raw > 0).then(raw.round(4).ceil()).otherwise(None).cast(pl.Int64, strict=False)
        df = df.with_columns(expected.alias("ndc_expected_units")).drop("_pkg_size", "_bill_units", "_bill_units_pkg")
    else:
        df = df.with_columns(pl.lit(None, dtype=pl.Int64).alias("ndc_expected_units"))
    mue_tables = [
        t.frame.select(
            pl.col("hcpcs").alias("charge_hcpcs"),
            pl.lit(claim).alias("claim_type"),
            pl.col("mue").cast(pl.Int64, strict=False).alias("mue_value"),
            pl.col("mai").alias("mue_mai"),
        )
        for name, claim in (("mue_practitioner", "professional"), ("mue_facility", "institutional"))
        if (t := ref.cms.get(name)) is not None
    ]
    if mue_tables:
        mue = pl.concat(mue_tables).unique(["charge_hcpcs", "claim_type"], keep="first")
        df = df.with_columns(*lookup(df, ["charge_hcpcs", "claim_type"], mue, nulls_equal=False))
    else:
        df = df.with_columns(
            pl.lit(None, dtype=pl.Int64).alias("mue_value"), pl.lit(None, dtype=pl.String).alias("mue_mai")
        )
    # MAI 1: units on the line; MAI 2 and 3: units on the date of service (the patient's lines of that
    # code that day), checked once, on the day's last line.
    day_units, last_line = date_of_service_lines(df)
    per_line = pl.col("mue_mai") == "1"
    return df.with_columns(
        pl.when(pl.col("mue_value").is_null())
        .then(None)
        .when(per_line)
        .then(pl.col("charge_units"))
        .otherwise(day_units)
        .cast(pl.Int64)
        .alias("mue_units"),
        (pl.col("mue_value").is_not_null() & pl.col("charge_units").is_not_null() & (per_line | last_line))
        .fill_null(False)
        .alias("mue_check"),
        pl.when(pl.col("mue_value").is_null())
        .then(None)
        .when(per_line)
        .then(pl.lit("on this line"))
        .otherwise(pl.lit("on this date of service"))
        .alias("mue_scope"),
    )


DATE_OF_SERVICE = ["patient_id", "service_date", "charge_hcpcs"]

# The canonical columns an earlier row's cross-row facts derive from: the patient and admin ids,
# admin_time (service_date, admin_instant), mar_action (given), route (route_class), and the
# ingredient and antidote_use (ndc, rxnorm_code, medication_name, dose_value, dose_unit,
# concentration_mcg_per_ml). Facts are per row or per patient and day (DATE_OF_SERVICE), so rows
# read only as an earlier date's look-back need no others (history.read_for_dates).
CROSS_ROW_SOURCES = (
    "patient_id",
    "admin_id",
    "admin_time",
    "mar_action",
    "route",
    "ndc",
    "rxnorm_code",
    "medication_name",
    "dose_value",
    "dose_unit",
    "concentration_mcg_per_ml",
)


def date_of_service_lines(df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """Per row, over the patient's lines of its code on its date of service: their units summed
    (an empty charge_units counts 0), and whether it is their last line (by admin_time, then
    admin_id; null when its admin_id is empty).

    Almost every such group is one line, whose answers are its own units and "yes": the windows
    (a sort inside each group) run only on the rows of the others, several times cheaper at a
    million rows than over every row."""
    size = df.select(pl.len().over(DATE_OF_SERVICE)).to_series()
    day_units = df["charge_units"].fill_null(0).alias("day_units")
    last_line = df.select(pl.when(pl.col("admin_id").is_not_null()).then(True).alias("last_line")).to_series()
    shared = (size > 1).arg_true()
    if shared.len():
        lines = df[shared].select(
            pl.col("charge_units").sum().over(DATE_OF_SERVICE).alias("day_units"),
            (
                pl.col("admin_id")
                == pl.col("admin_id").sort_by(["admin_time", "admin_id"]).last().over(DATE_OF_SERVICE)
            ).alias("last_line"),
        )
        day_units = day_units.scatter(shared, lines["day_units"])
        last_line = last_line.scatter(shared, lines["last_line"])
    return day_units, last_line


# --- derivations for the catalog rules (read dose_mcg, dose_ml, expected_units: run after them) --


def antidote_use(cfg: SiteConfig) -> pl.Expr:
    """Hydroxocobalamin given as the cyanide antidote (Cyanokit, 5 g IV), not for B12 deficiency:
    a hydroxocobalamin row whose NDC is one of antidote_ndcs, whose name says Cyanokit, or whose dose
    is at least antidote_min_dose_mg (a deficiency dose is 1 mg; an antidote dose is grams)."""
    hydroxo = pl.col("ingredient") == "hydroxocobalamin"
    signs = (
        pl.col("ndc11").is_in(list(cfg.antidote_ndcs)).fill_null(False)
        | pl.col("medication_name").str.contains("(?i)cyanokit").fill_null(False)
        | (pl.col("dose_mcg") >= cfg.antidote_min_dose_mg * 1000).fill_null(False)
    )
    return (hydroxo & signs).fill_null(False)


def dose_plus_waste_mcg() -> pl.Expr:
    """MOD-003: dose given plus documented waste; an empty waste counts as 0 (null if the dose is unknown)."""
    return pl.col("dose_mcg") + pl.col("waste_mcg").fill_null(0.0)


def unit_capacity_mcg() -> pl.Expr:
    """MOD-003: mcg the billed J3420 units cover (units x 1000): charge_units when the line has them,
    else the units the dose needs (expected_units)."""
    return (pl.coalesce(pl.col("charge_units"), pl.col("expected_units")) * 1000).cast(pl.Float64)


def ndc_qty_diff_ml() -> pl.Expr:
    """NDC-005: |charge_ndc_qty - dose_ml| in mL, rounded to 4 places so 0.51 vs 0.5 is exactly 0.01."""
    return (pl.col("charge_ndc_qty") - pl.col("dose_ml")).abs().round(4)


def expected_units(dose_mcg: float) -> int:
    """J3420 units for one administration: ceil(dose_mcg / 1000). Reference for tests and docs."""
    return math.ceil(dose_mcg / 1000)
