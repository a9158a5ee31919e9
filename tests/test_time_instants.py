"""Administration times: the date of service is the local date as written; DUP-001 compares instants.

Each test failed before instants existed: DUP-001 compared wall-clock times with the offset dropped
(15:00Z and 10:00-05:00 five hours apart; the wrong dose flagged across a DST change), a UTC-typed
Parquet timestamp moved a 22:30 EST dose to the next date of service, and a row dated 1999 or
after the night was billed like any other.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from b12pipeline import normalize
from b12pipeline.config import load_site_config
from b12pipeline.engine.settings import ConfigError
from b12pipeline.facts import evaluation_facts
from b12pipeline.history import merge_into_history, read_history
from b12pipeline.ingest.read import read_extract
from b12pipeline.pipeline import Rules, stage_file
from b12pipeline.rulecases import case_defaults, case_frame

NEW_YORK = "America/New_York"


@pytest.fixture(scope="module")
def loaded() -> Rules:
    return Rules.load()


def rows(loaded: Rules, *times: str) -> list[dict]:
    """One clean injection per time, same patient and ingredient, admin ids A-1, A-2, ... in order."""
    defaults = case_defaults(loaded.ruleset.directory)
    return [{**defaults, "admin_id": f"A-{i}", "admin_time": t} for i, t in enumerate(times, start=1)]


def duplicates(loaded: Rules, *times: str, time_zone: str | None = None) -> list[str]:
    """The admin ids DUP-001's fact marks as the later of a pair."""
    cfg = loaded.config if time_zone is None else dataclasses.replace(loaded.config, time_zone=time_zone)
    facts = evaluation_facts(case_frame(rows(loaded, *times)), loaded.reference, cfg, loaded.ruleset.payers)
    return facts.filter(pl.col("duplicate_of_prior"))["admin_id"].to_list()


def test_dup001_compares_instants_when_offsets_are_written(loaded):
    # The same instant written two ways: a duplicate (the larger admin_id is the later).
    assert duplicates(loaded, "2024-03-01T15:00:00Z", "2024-03-01T10:00:00-05:00") == ["A-2"]
    # 14:30Z is 09:30 in New York: the 10:00-05:00 dose is the later one, not the 14:30Z one.
    assert duplicates(loaded, "2024-03-01T14:30:00Z", "2024-03-01T10:00:00-05:00") == ["A-2"]
    # Offsets that put two doses 5 hours apart: not a duplicate, whatever the wall clocks say.
    assert duplicates(loaded, "2024-03-01T10:00:00+00:00", "2024-03-01T10:30:00+05:00") == []
    # The date of service stays the local date as written.
    facts = evaluation_facts(
        case_frame(rows(loaded, "2024-03-01T23:30:00-05:00")), loaded.reference, loaded.config, loaded.ruleset.payers
    )
    assert facts["service_date"].to_list() == [dt.date(2024, 3, 1)]
    assert facts["admin_instant"].to_list() == [dt.datetime(2024, 3, 2, 4, 30, tzinfo=dt.timezone.utc)]


def test_dup001_across_a_dst_change_flags_the_later_dose(loaded):
    # Fall back: 01:50 EDT is 05:50Z, the second 01:10 (EST) is 06:10Z: the 01:10 dose is the later.
    assert duplicates(loaded, "2024-11-03T01:50:00-04:00", "2024-11-03T01:10:00-05:00") == ["A-2"]
    # Spring forward, times without offset read in the site zone: 01:30 EST to 03:10 EDT is 40 minutes.
    assert duplicates(loaded, "2024-03-10T01:30:00", "2024-03-10T03:10:00", time_zone=NEW_YORK) == ["A-2"]
    # The same wall clocks in a zone without DST are 100 minutes apart.
    assert duplicates(loaded, "2024-03-10T01:30:00", "2024-03-10T03:10:00", time_zone="UTC") == []


def test_a_repeated_or_skipped_local_hour_is_read_with_the_offset_before_the_change():
    frame = pl.DataFrame({"admin_time": ["2024-11-03T01:30:00", "2024-03-10T02:30:00", "2024-03-10T12:00:00"]})
    got = frame.select(
        normalize.instant(normalize.local_timestamp(), normalize.utc_offset_minutes(), NEW_YORK).alias("i")
    )["i"].to_list()
    utc = dt.timezone.utc
    assert got == [
        dt.datetime(2024, 11, 3, 5, 30, tzinfo=utc),  # the first 01:30 (EDT), as zoneinfo's fold=0
        dt.datetime(2024, 3, 10, 7, 30, tzinfo=utc),  # 02:30 does not exist: read as EST (= 03:30 EDT)
        dt.datetime(2024, 3, 10, 16, 0, tzinfo=utc),  # after the change: EDT
    ]


def extract_rows(loaded: Rules, *times: str) -> pl.DataFrame:
    """Contract columns of clean B12 rows, one per time, each its own patient (no cross-row finding)."""
    defaults = case_defaults(loaded.ruleset.directory)
    records = [
        {**defaults, "admin_id": f"A-{i}", "patient_id": f"P-{i}", "admin_time": t} for i, t in enumerate(times, 1)
    ]
    frame = case_frame(records)
    return frame.select([c for c in frame.columns if c in defaults])


def test_utc_typed_parquet_keeps_the_site_date_of_service(tmp_path, loaded):
    assert loaded.config.time_zone == NEW_YORK  # the shipped site.yaml
    path = tmp_path / "emar_utc.parquet"
    frame = extract_rows(loaded, "2025-01-15T00:00:00").with_columns(
        pl.lit(dt.datetime(2025, 1, 16, 3, 30)).dt.replace_time_zone("UTC").alias("admin_time")  # 22:30 EST
    )
    frame.write_parquet(path)
    result = stage_file(path, tmp_path / "out", "night-t", dt.date(2025, 1, 16), loaded)
    assert (result.status, result.in_scope, result.quarantined) == ("processed", 1, 0)
    staged = read_history(Path(result.staged))
    assert staged["admin_time"].to_list() == ["2025-01-15T22:30:00-05:00"]
    assert merge_into_history(tmp_path / "out" / "history", [Path(result.staged)]) == [dt.date(2025, 1, 15)]


def test_dates_of_service_outside_the_plausible_window_are_quarantined(tmp_path, loaded):
    night = dt.date(2024, 3, 1)
    times = [
        "1999-12-31T23:59:00",  # before earliest_service_date (2000-01-01)
        "2024-03-03T00:00:00",  # two days after the night (service_date_max_days_after_night: 1)
        "2000-01-01T00:00:00",  # the window's ends are inside it
        "2024-03-02T23:59:00",
        "2024-03-01T10:00:00",
        "2024-03-01T11:00:00",
    ]
    path = tmp_path / "emar.csv"
    extract_rows(loaded, *times).write_csv(path)
    result = stage_file(path, tmp_path / "out", "night-t", night, loaded)
    assert (result.status, result.in_scope, result.quarantined) == ("processed", 4, 2)
    held = pl.concat([pl.read_parquet(p) for p in (tmp_path / "out" / "quarantine").rglob("*.parquet")])
    assert sorted(held["admin_id"].to_list()) == ["A-1", "A-2"]
    for reason in held["failure_reasons"].to_list():
        assert reason.startswith("admin_time: the date of service is outside the plausible window")
        assert "2000-01-01..2024-03-02" in reason
        assert "1999" not in reason and "2024-03-03" not in reason  # the row's value is never quoted
    assert held["failed_expectations"].to_list() == [["b12_service_date_in_plausible_window(admin_time)"]] * 2


def test_time_settings_are_checked_when_site_yaml_is_read(tmp_path):
    site = tmp_path / "site.yaml"
    for text, named in (
        ("time_zone: Mars/Olympus_Mons\n", "time_zone"),
        ("time_zone: [UTC]\n", "time_zone"),
        ("earliest_service_date: soon\n", "earliest_service_date"),
        ("service_date_max_days_after_night: -1\n", "service_date_max_days_after_night"),
    ):
        site.write_text(text)
        with pytest.raises(ConfigError, match=named):
            load_site_config(site)
    site.write_text("time_zone: Europe/Berlin\nearliest_service_date: 2010-01-01\n")
    cfg = load_site_config(site)
    assert (cfg.time_zone, cfg.earliest_service_date) == ("Europe/Berlin", dt.date(2010, 1, 1))
    # A site.yaml that says nothing reads times without offset as UTC (wall clock unchanged).
    site.write_text("{}\n")
    assert load_site_config(site).time_zone == "UTC"


def test_parquet_timestamps_without_a_zone_are_wall_clock_times_as_written(tmp_path, loaded):
    path = tmp_path / "emar_naive.parquet"
    extract_rows(loaded, "2025-01-15T00:00:00").with_columns(
        pl.lit(dt.datetime(2025, 1, 15, 22, 30)).alias("admin_time")
    ).write_parquet(path)
    assert read_extract(path, time_zone=NEW_YORK).frame["admin_time"].to_list() == ["2025-01-15T22:30:00"]
