"""Cross-row derivations (FREQ-001, DUP-001): each row's patient history as of its own time.

Computed over history plus the night's rows, looking only backwards from each administration, so
the answer for a date never depends on rows from later dates or on the wall clock.
"""
from __future__ import annotations

import polars as pl

from b12pipeline.config import SiteConfig

CROSS_ROW_COLUMNS = ("prior_injection_within_window", "days_since_first_injection", "duplicate_of_prior")


def add_cross_row_facts(facts: pl.DataFrame, cfg: SiteConfig) -> pl.DataFrame:
    """Adds, per row (null/false where not applicable):

    prior_injection_within_window  another given injectable B12 for the patient on a DOS in the
                                   frequency_window_days before this DOS (not the same day)
    days_since_first_injection     days from the patient's first given injectable B12 in the
                                   frequency_lookback_days before this DOS, to this DOS
    duplicate_of_prior             another given injectable B12, same patient and ingredient, with
                                   admin_time within duplicate_window_minutes before this one (at
                                   the same minute, the one with the larger admin_id is the later)
    """
    inj = (pl.col("given") & pl.col("route_class").is_in(["injectable", "intravenous"])).alias("_inj")
    df = facts.with_columns(inj, pl.int_range(pl.len(), dtype=pl.Int64).alias("_i"))
    events = df.filter(pl.col("_inj")).select("patient_id", "ingredient", "service_date", "admin_time",
                                              "admin_id", "_i")

    # Prior injections per target row (self-join on patient; B12 rows per patient are few).
    pairs = df.select("patient_id", "service_date", "admin_time", "ingredient", "admin_id", "_i").join(
        events.rename({"service_date": "p_date", "admin_time": "p_time", "ingredient": "p_ing",
                       "admin_id": "p_id", "_i": "p_i"}),
        on="patient_id", how="inner").filter(pl.col("p_i") != pl.col("_i"))
    days_before = (pl.col("service_date") - pl.col("p_date")).dt.total_days()
    minutes_before = (pl.col("admin_time") - pl.col("p_time")).dt.total_seconds() / 60
    agg = pairs.group_by("_i").agg(
        ((days_before > 0) & (days_before <= cfg.frequency_window_days)).any().alias("prior_injection_within_window"),
        days_before.filter((days_before >= 0) & (days_before <= cfg.frequency_lookback_days)).max()
        .alias("days_since_first_injection"),
        ((pl.col("p_ing") == pl.col("ingredient")) & (minutes_before >= 0)
         & (minutes_before <= cfg.duplicate_window_minutes)
         & ((minutes_before > 0) | (pl.col("p_id") < pl.col("admin_id")))).any().alias("duplicate_of_prior"),
    )
    out = df.join(agg, on="_i", how="left").with_columns(
        pl.col("prior_injection_within_window").fill_null(False),
        pl.col("duplicate_of_prior").fill_null(False),
    )
    return out.sort("_i").drop("_i", "_inj")
