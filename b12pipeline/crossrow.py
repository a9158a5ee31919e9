"""Cross-row derivations (FREQ-001, DUP-001): each row's patient history as of its own time.

Computed over history plus the night's rows, looking only backwards from each administration, so
the answer for a date never depends on rows from later dates or on the wall clock.

No pairwise self-join: each derivation is one as-of join (or one shift over a sorted frame) that
finds the single nearest earlier injection that can decide the answer. The work is O(n log n) in
the rows read, whatever the length of a patient's history, and no row is ever paired with an
injection outside its lookback window.
"""

from __future__ import annotations

import polars as pl

from b12pipeline.engine.settings import SiteConfig

CROSS_ROW_COLUMNS = ("prior_injection_within_window", "days_since_first_injection", "duplicate_of_prior")
INJECTION_ROUTES = ("injectable", "intravenous")


def is_injection(antidote_known: bool = True) -> pl.Expr:
    """A given B12 administration by injection (IM/SC, or IV push): the events cross-row rules count.
    Cyanide-antidote hydroxocobalamin is not a B12 replacement dose and is not counted (a frame
    built without `antidote_use`, such as a hand-made history, has no antidote rows)."""
    injection = pl.col("given").fill_null(False) & pl.col("route_class").is_in(list(INJECTION_ROUTES))
    return injection & ~pl.col("antidote_use").fill_null(False) if antidote_known else injection


def add_cross_row_facts(facts: pl.DataFrame, cfg: SiteConfig) -> pl.DataFrame:
    """`facts` with the cross-row columns (cross_row_columns) added, or replaced when present."""
    return facts.with_columns(cross_row_columns(facts, cfg))


def cross_row_columns(
    facts: pl.DataFrame, cfg: SiteConfig, columns: tuple[str, ...] = CROSS_ROW_COLUMNS, rows: pl.Expr | None = None
) -> pl.DataFrame:
    """The cross-row facts of every row of `facts`, in its row order (null/false where not applicable):

    prior_injection_within_window  the patient has a given B12 injection on a DOS in the
                                   frequency_window_days before this DOS (DOS-30 .. DOS-1; the
                                   same day does not count: that is DUP-001's business)
    days_since_first_injection     days from the patient's first given B12 injection with a DOS in
                                   [DOS - frequency_lookback_days, DOS] to this DOS (0 when this
                                   row's own day is the first); null when there is none
    duplicate_of_prior             this row is a given B12 injection and another one for the same
                                   patient and ingredient was given within
                                   duplicate_window_minutes before it, compared as instants
                                   (admin_instant: 15:00Z and 10:00-05:00 are the same moment, and
                                   a DST change does not stretch or shrink the gap); at the same
                                   instant, the one with the larger admin_id is "the later" and is
                                   flagged

    Only `columns` are computed, and the FREQ-001 facts only on `rows` (null/false elsewhere): a
    payer file that changes one window recomputes only its column, for its own rows (their
    patients' injections under any payer still count).
    The work reads a few narrow columns and returns only the new ones: joining and sorting the whole
    facts frame (about 90 columns) cost more time and memory than the derivations themselves.
    """
    # A hand-made frame without admin_instant (normalize.facts adds it) compares admin_time.
    moment = "admin_instant" if "admin_instant" in facts.columns else "admin_time"
    keys = ["patient_id", "service_date"]
    if "duplicate_of_prior" in columns:
        keys += ["ingredient", moment, "admin_id"]
    df = facts.select(
        *keys,
        is_injection("antidote_use" in facts.columns).alias("_inj"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("_i"),
        (pl.lit(True) if rows is None else rows).alias("_rows"),
    )
    found = []  # per derivation: (_i, its column) for the rows it applies to
    # Each patient (and ingredient) as a number: sorting and matching by numbers is several times
    # cheaper than by text. Which number a patient gets does not matter: it only groups rows.
    df = df.with_columns(_code(df, "patient_id").alias("_p"))
    keyed = df.filter(pl.col("_rows") & pl.col("_p").is_not_null() & pl.col("service_date").is_not_null()).select(
        "_i", "_p", "service_date"
    )
    # Injection days per patient: the only thing the two FREQ-001 facts need from other rows.
    days = (
        df.filter(pl.col("_inj") & pl.col("_p").is_not_null() & pl.col("service_date").is_not_null())
        .select("_p", pl.col("service_date").alias("_day"))
        .unique()
        .sort("_day")
    )
    if "prior_injection_within_window" in columns:
        # Latest injection day strictly before DOS; within the window when DOS - it <= window days.
        latest = (
            keyed.with_columns(pl.col("service_date").dt.offset_by("-1d").alias("_key"))
            .sort("_key")
            .join_asof(days, left_on="_key", right_on="_day", by="_p", strategy="backward", check_sortedness=False)
            .select(
                "_i",
                ((pl.col("service_date") - pl.col("_day")).dt.total_days() <= cfg.frequency_window_days)
                .fill_null(False)
                .alias("prior_injection_within_window"),
            )
        )
        found.append(latest)
    if "days_since_first_injection" in columns:
        # Earliest injection day on or after DOS - lookback; it counts only if it is not after DOS.
        earliest = (
            keyed.with_columns(pl.col("service_date").dt.offset_by(f"-{cfg.frequency_lookback_days}d").alias("_key"))
            .sort("_key")
            .join_asof(days, left_on="_key", right_on="_day", by="_p", strategy="forward", check_sortedness=False)
            .select(
                "_i",
                pl.when(pl.col("_day") <= pl.col("service_date"))
                .then((pl.col("service_date") - pl.col("_day")).dt.total_days())
                .otherwise(None)
                .cast(pl.Int64)
                .alias("days_since_first_injection"),
            )
        )
        found.append(earliest)
    if "duplicate_of_prior" in columns:
        # DUP-001: in (patient, ingredient, instant, admin_id) order the nearest earlier injection
        # is the row just before; if that one is outside the window, every earlier one is too.
        # One number per (patient, ingredient): a sort by one number, then by time, is much
        # cheaper than by two texts (a million rows).
        ingredients = _code(df, "ingredient")
        df = df.with_columns(ingredients.alias("_g"))
        pair = pl.col("_p") * (ingredients.drop_nulls().n_unique() + 1) + pl.col("_g")
        same = pl.col("_pair").eq(pl.col("_pair").shift(1))
        gap = pl.col(moment) - pl.col(moment).shift(1)
        duplicates = (
            df.with_columns(pair.alias("_pair"))
            .filter(pl.col("_inj") & pl.col("_pair").is_not_null() & pl.col(moment).is_not_null())
            .select("_i", "_pair", moment, "admin_id")
            # Only admin_id can be null here; nulls_last on every key takes a several times slower sort.
            .sort("_pair", moment, "admin_id", nulls_last=[False, False, True])
            .select(
                "_i",
                (same & (gap <= pl.duration(minutes=cfg.duplicate_window_minutes)))
                .fill_null(False)
                .alias("duplicate_of_prior"),
            )
        )
        found.append(duplicates)
    flags = [c for c in ("prior_injection_within_window", "duplicate_of_prior") if c in columns]
    out = pl.DataFrame([_in_row_order(part, facts.height) for part in found])
    return out.select(
        [pl.col(c).fill_null(False) if c in flags else pl.col(c) for c in CROSS_ROW_COLUMNS if c in columns]
    )


def _in_row_order(part: pl.DataFrame, height: int) -> pl.Series:
    """`part`'s value column placed at its rows (`_i`) of a frame of `height` rows, null elsewhere."""
    (name,) = (c for c in part.columns if c != "_i")
    blank = pl.repeat(None, height, dtype=part.schema[name], eager=True).alias(name)
    return blank.scatter(part["_i"], part[name])


def _code(frame: pl.DataFrame, column: str) -> pl.Series:
    """A number per distinct non-null value of `column` (0, 1, ...), null where it is null."""
    values = frame.get_column(column).unique().drop_nulls().to_frame().with_row_index("_code")
    found = frame.select(column).join(values, on=column, how="left", maintain_order="left")
    return found["_code"].cast(pl.Int64)
