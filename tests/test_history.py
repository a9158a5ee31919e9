"""History store, archive, cross-row facts (FREQ-001, DUP-001) and idempotent nights."""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
from pathlib import Path

import polars as pl
import pytest
from history_support import (
    FIRST_DOS,
    LAST_DOS,
    NIGHTS,
    copy_out,
    merge_rows,
    night_file,
    queue_files,
    queue_frame,
    run_nights,
    without_run_id,
)

from b12pipeline import pipeline
from b12pipeline.archive import ArchiveError, archive_file, archive_index, archived_checksums
from b12pipeline.crossrow import add_cross_row_facts
from b12pipeline.engine.settings import SiteConfig
from b12pipeline.files import sha256_file
from b12pipeline.history import history_paths, merge_into_history, read_history, stage_rows
from b12pipeline.rulecases import case_frame, run_rule_cases

# ---------------------------------------------------------------- history store (supersession)


def _rows(*specs: tuple[str, str], **changes) -> pl.DataFrame:
    """Canonical rows (admin_id, admin_time), shaped exactly as ingest shapes them."""
    return case_frame(
        [{"admin_id": a, "patient_id": "P1", "admin_time": t, "dose_value": "1000", **changes} for a, t in specs]
    )


def test_history_partitions_by_service_date_and_returns_touched_dates(tmp_path):
    touched = merge_rows(tmp_path, _rows(("A1", "2024-03-01T09:00:00"), ("A2", "2024-03-02T23:59:00")))
    assert touched == [dt.date(2024, 3, 1), dt.date(2024, 3, 2)]
    assert sorted(history_paths(tmp_path)) == touched
    assert read_history(tmp_path, dt.date(2024, 3, 2), None)["admin_id"].to_list() == ["A2"]


def test_correction_on_the_same_date_supersedes_the_earlier_row(tmp_path):
    merge_rows(tmp_path, _rows(("A1", "2024-03-01T09:00:00"), ("A2", "2024-03-01T10:00:00")))
    touched = merge_rows(tmp_path, _rows(("A1", "2024-03-01T09:00:00"), dose_value="2000"))
    assert touched == [dt.date(2024, 3, 1)]
    rows = read_history(tmp_path)
    assert rows.height == 2
    assert rows.filter(pl.col("admin_id") == "A1")["dose_value"].to_list() == ["2000"]


def test_correction_that_moves_an_admin_to_another_date(tmp_path):
    merge_rows(
        tmp_path, _rows(("A1", "2024-03-05T10:30:00"), ("A2", "2024-03-05T11:00:00"), ("B1", "2024-03-04T08:00:00"))
    )
    touched = merge_rows(tmp_path, _rows(("A1", "2024-03-04T10:30:00")))
    assert touched == [dt.date(2024, 3, 4), dt.date(2024, 3, 5)]  # both the old and the new date
    by_day = {d: pl.read_parquet(p)["admin_id"].to_list() for d, p in history_paths(tmp_path).items()}
    assert by_day == {dt.date(2024, 3, 4): ["A1", "B1"], dt.date(2024, 3, 5): ["A2"]}
    # Moving the last row off a date removes that date's partition altogether.
    merge_rows(tmp_path, _rows(("A2", "2024-03-06T11:00:00")))
    assert dt.date(2024, 3, 5) not in history_paths(tmp_path)
    assert read_history(tmp_path).height == 3  # nothing lost, nothing doubled


def test_within_one_batch_the_last_row_of_an_admin_id_wins(tmp_path):
    merge_rows(tmp_path, _rows(("A1", "2024-03-01T09:00:00"), ("A1", "2024-03-02T09:00:00")))
    assert read_history(tmp_path)["admin_time"].to_list() == ["2024-03-02T09:00:00"]
    assert list(history_paths(tmp_path)) == [dt.date(2024, 3, 2)]


def test_merging_the_same_rows_again_is_byte_identical(tmp_path):
    rows = _rows(("A1", "2024-03-01T09:00:00"), ("A2", "2024-03-01T10:00:00"))
    merge_rows(tmp_path, rows)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.parquet")}
    merge_rows(tmp_path, rows)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.parquet")} == before


def test_a_merge_across_many_dates_keeps_exactly_the_last_version_of_each_admin(tmp_path):
    """Two batches over 60 dates, the second one read in pieces (as a file's row groups are), with
    corrections on the same date, corrections that move a dose to another date, repeats within the
    batch and dates emptied: each partition holds the last version of its admins, sorted by
    admin_id, exactly as a plain per-admin model says; touched = dates gaining or losing a row."""
    rnd = random.Random(5)
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(60)]

    def batch(ids: list[str], tag: str, on: list[dt.date]) -> list[tuple[str, str, str]]:
        return [
            (a, f"{rnd.choice(on).isoformat()}T{rnd.randrange(24):02d}:00:00", f"{tag}{i}") for i, a in enumerate(ids)
        ]

    def frame(specs: list[tuple[str, str, str]]) -> pl.DataFrame:
        return case_frame([{"admin_id": a, "patient_id": "P1", "admin_time": t, "dose_value": v} for a, t, v in specs])

    first = batch([f"A{i:04d}" for i in range(600)], "f", days)
    merge_rows(tmp_path, frame(first))
    # A later batch: new admins, corrections of earlier ones (some moving date), repeats within it.
    second = batch(
        [f"A{i:04d}" for i in rnd.sample(range(600), 200)] + [f"B{i:04d}" for i in range(300)], "s", days[1:]
    )
    second += batch([a for a, _, _ in rnd.sample(second, 50)], "r", days[1:])
    # Every row of the first date moves away: that date's partition goes.
    emptied = days[0].isoformat()
    second += [(a, f"{days[-1].isoformat()}T01:00:00", "m") for a, t, _ in first if t.startswith(emptied)]
    pieces = frame(second)
    chunked = pl.concat([pieces.slice(i, 97) for i in range(0, pieces.height, 97)], rechunk=False)
    assert chunked.n_chunks() > 1
    before = {d: set(pl.read_parquet(p)["admin_id"]) for d, p in history_paths(tmp_path).items()}
    assert days[0] in before

    touched = merge_rows(tmp_path, chunked)

    model = {a: (t, v) for a, t, v in first + second}  # the last version of each admin wins
    want: dict[dt.date, list[tuple[str, str, str]]] = {}
    for a, (t, v) in sorted(model.items()):
        want.setdefault(dt.date.fromisoformat(t[:10]), []).append((a, t, v))
    got = {
        d: list(pl.read_parquet(p).select("admin_id", "admin_time", "dose_value").iter_rows())
        for d, p in history_paths(tmp_path).items()
    }
    assert got == want
    assert dt.date.fromisoformat(emptied) not in got
    changed = {d for d in set(before) | set(want) if before.get(d) != {a for a, _, _ in want.get(d, [])}}
    changed |= {dt.date.fromisoformat(t[:10]) for _, t, _ in second}  # a re-sent row rewrites its date
    assert touched == sorted(changed | {d for d in before if any(a in before[d] for a, _, _ in second)})


def test_a_nights_later_file_supersedes_an_earlier_files_row_and_untouched_dates_are_linked(tmp_path):
    """Two files staged in one night: a later file's row of an admin_id replaces the earlier file's,
    whatever the dates; a date only one file has, and nothing else changes, enters history as that
    staged file (the same file, linked: not written again); every other date is merged and sorted."""
    history, first, second = tmp_path / "history", tmp_path / "staged-1", tmp_path / "staged-2"
    merge_rows(history, _rows(("H1", "2024-03-01T08:00:00"), ("H2", "2024-03-03T08:00:00")))
    # The first file repeats an administration (its correction in the same file wins) and has A1,
    # which the second file moves to another date; H2's date gains a row from the second file.
    assert (
        stage_rows(
            _rows(("B1", "2024-03-02T09:00:00"), ("B1", "2024-03-02T10:00:00"), ("A1", "2024-03-02T11:00:00")), first
        )
        == 2
    )
    assert (
        stage_rows(
            _rows(("A1", "2024-03-04T09:00:00"), ("C1", "2024-03-03T09:00:00"), ("D1", "2024-03-05T09:00:00")), second
        )
        == 3
    )

    touched = merge_into_history(history, [first, second])

    assert touched == [dt.date(2024, 3, d) for d in (2, 3, 4, 5)]
    by_day = {d: read_history(history, d, d)["admin_id"].to_list() for d in history_paths(history)}
    assert by_day == {
        dt.date(2024, 3, 1): ["H1"],
        dt.date(2024, 3, 2): ["B1"],
        dt.date(2024, 3, 3): ["C1", "H2"],
        dt.date(2024, 3, 4): ["A1"],
        dt.date(2024, 3, 5): ["D1"],
    }
    assert read_history(history, dt.date(2024, 3, 2), dt.date(2024, 3, 2))["admin_time"].to_list() == [
        "2024-03-02T10:00:00"
    ]
    staged = {d: p.stat().st_ino for folder in (first, second) for d, p in history_paths(folder).items()}
    kept = {d: p.stat().st_ino for d, p in history_paths(history).items()}
    linked = {d for d in kept if kept[d] == staged.get(d)}
    assert linked == {dt.date(2024, 3, 4), dt.date(2024, 3, 5)}  # 2 lost A1 to a later file; 3 had H2
    # The night's staging removed, the linked files are history's own; a re-sent row replaces one.
    shutil.rmtree(first), shutil.rmtree(second)
    before = read_history(history)
    assert before.height == 6
    again = tmp_path / "staged-3"
    stage_rows(_rows(("D1", "2024-03-05T09:00:00")), again)
    assert merge_into_history(history, [again]) == [dt.date(2024, 3, 5)]
    lineage = ("source_file", "source_row")  # the row's place in the file it came from
    assert read_history(history).drop(lineage).equals(before.drop(lineage))


def test_where_the_file_system_has_no_hard_links_a_staged_date_is_copied_into_history(tmp_path, monkeypatch):
    """Some network shares refuse hard links: the staged file's bytes are copied instead, through the
    same temporary name and rename, and the staged file stays as it is."""
    import b12pipeline.files as files

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    staged, history = tmp_path / "staged", tmp_path / "history"
    stage_rows(_rows(("A1", "2024-03-01T09:00:00"), ("A2", "2024-03-01T10:00:00")), staged)
    (source,) = history_paths(staged).values()
    monkeypatch.setattr(files.os, "link", refuse)
    assert merge_into_history(history, [staged]) == [dt.date(2024, 3, 1)]
    (target,) = history_paths(history).values()
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_ino != source.stat().st_ino
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left


def test_reading_dates_in_groups_returns_the_same_rows_in_the_same_order(tmp_path, monkeypatch):
    """read_for_dates collects its files a few at a time: any group size gives the rows a plain
    read of the whole history says it should (the dates' rows, then the same patients' earlier rows
    within the look-back), in date order and each file's own order."""
    import b12pipeline.history as history

    rnd = random.Random(3)
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(50)]
    specs = [
        {
            "admin_id": f"A{i:04d}",
            "patient_id": f"P{rnd.randrange(40)}",
            "admin_time": f"{rnd.choice(days).isoformat()}T{rnd.randrange(24):02d}:00:00",
            "dose_value": "1000",
        }
        for i in range(800)
    ]
    merge_rows(tmp_path, case_frame(specs))
    wanted, lookback = [days[30], days[41], days[49]], 20
    everything = read_history(tmp_path)
    service_date = pl.col("admin_time").str.slice(0, 10).str.to_date()
    on_dates = everything.filter(service_date.is_in(wanted))
    context = everything.filter(
        service_date.is_between(wanted[0] - dt.timedelta(days=lookback), wanted[-1])
        & ~service_date.is_in(wanted)
        & pl.col("patient_id").is_in(on_dates["patient_id"].implode())
    )
    assert on_dates.height and context.height
    expected = pl.concat([on_dates, context]).sort(service_date, maintain_order=True)
    for group in (1, 3, 16, 1000):
        monkeypatch.setattr(history, "COLLECT_GROUP", group)
        assert history.read_for_dates(tmp_path, wanted, lookback).equals(expected), group
        some = pl.Series(["P1", "P7"])
        assert history.read_for_dates(tmp_path, wanted, lookback, some).equals(
            expected.filter(pl.col("patient_id").is_in(some.implode()))
        )


def test_earlier_rows_in_files_of_other_schemas_read_as_a_plain_read_does(tmp_path):
    """The earlier rows are read in one query when every file has the same columns; history
    written before a column was added (or with one more) reads as a plain read of every file gives
    it: the same rows, the same order, the union of the columns."""
    import b12pipeline.history as history

    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(12)]
    specs = [
        {"admin_id": f"A{i:03d}", "patient_id": f"P{i % 5}", "admin_time": f"{days[i % 12]}T{i % 24:02d}:00:00"}
        for i in range(120)
    ]
    merge_rows(tmp_path, case_frame(specs))
    paths = history_paths(tmp_path)
    for day in days[2:4]:  # written before `site` existed
        pl.read_parquet(paths[day]).drop("site").write_parquet(paths[day])
    pl.read_parquet(paths[days[5]]).with_columns(pl.lit("x").alias("later_column")).write_parquet(paths[days[5]])
    wanted = [days[8], days[11]]
    service_date = pl.col("admin_time").str.slice(0, 10).str.to_date()
    everything = read_history(tmp_path)
    on_dates = everything.filter(service_date.is_in(wanted))
    expected = everything.filter(
        service_date.is_in(wanted) | (pl.col("patient_id").is_in(on_dates["patient_id"].implode()))
    )
    got = history.read_for_dates(tmp_path, wanted, 30)
    assert got.columns == expected.columns and "later_column" in got.columns
    assert got.equals(expected)
    assert got.filter(service_date.is_in(days[2:4]))["site"].is_null().all()


def test_an_earlier_rows_cross_row_facts_need_only_the_columns_read_for_it(rules, tmp_path):
    """Rows read as a date's look-back carry only normalize.CROSS_ROW_SOURCES (the other columns
    null): on varied synthetic rows (defects included) the facts cross-row rules read of them, and
    the cross-row facts themselves, are the same as from the whole rows."""
    from b12pipeline import normalize, synth
    from b12pipeline.facts import evaluation_facts

    extract = tmp_path / "night.csv"
    synth.generate(4000, seed=9, defect_rate=0.3, b12_share=1.0, days=60).frame.write_csv(extract)
    staged = pipeline.stage_file(extract, tmp_path / "out", "r", dt.date(2024, 3, 15), rules)
    # And rows whose ingredient comes from the name or the RxNorm code alone, and antidote doses in
    # g-equivalent units and in mL at a charted concentration (synthetic rows always carry an NDC).
    given = {"patient_id": "PX", "mar_action": "given", "route": "IM"}
    hydroxo = {**given, "medication_name": "hydroxocobalamin injection"}
    hand = case_frame(
        [
            {
                **hydroxo,
                "admin_id": "H1",
                "admin_time": "2024-03-01T09:00:00",
                "dose_value": "1000",
                "dose_unit": "mcg",
            },
            {**given, "admin_id": "H2", "admin_time": "2024-03-02T09:00:00", "rxnorm_code": "309594"},
            {**given, "admin_id": "H3", "admin_time": "2024-03-02T09:30:00", "rxnorm_code": "309594"},
            {**hydroxo, "admin_id": "H4", "admin_time": "2024-03-03T09:00:00", "dose_value": "200", "dose_unit": "mg"},
            {**hydroxo, "admin_id": "H5", "admin_time": "2024-03-04T09:00:00", "dose_value": "8", "dose_unit": "mL"}
            | {"concentration_mcg_per_ml": "25000"},
        ]
    )
    whole = pl.concat([read_history(Path(staged.staged)), hand], how="diagonal_relaxed")
    narrow = whole.with_columns(
        pl.lit(None, dtype=whole.schema[c]).alias(c) for c in whole.columns if c not in normalize.CROSS_ROW_SOURCES
    )
    read = ["patient_id", "admin_id", "service_date", "admin_instant", "ingredient", "given", "route_class"]
    read += ["antidote_use", "prior_injection_within_window", "days_since_first_injection", "duplicate_of_prior"]
    facts = [
        evaluation_facts(f, rules.reference, rules.config, rules.ruleset.payers).select(read) for f in (whole, narrow)
    ]
    assert facts[0]["given"].sum() > 100 and facts[0]["duplicate_of_prior"].sum() > 0
    assert facts[0]["route_class"].n_unique() > 2 and facts[0]["ingredient"].n_unique() > 1
    assert facts[0].filter(pl.col("patient_id") == "PX")["antidote_use"].to_list() == [False] * 3 + [True] * 2
    assert facts[1].equals(facts[0])


# ---------------------------------------------------------------- archive


def test_archive_keeps_exact_bytes_once_per_checksum(tmp_path):
    src = night_file(NIGHTS[1])
    root = tmp_path / "archive"
    sha = sha256_file(src)
    first = archive_file(src, sha, root, "2024-03-05")
    assert first.read_bytes() == src.read_bytes()
    assert (first.parent / f"{src.name}.sha256").read_text() == f"{sha}  {src.name}\n"
    renamed = tmp_path / "resent_under_another_name.csv"
    shutil.copyfile(src, renamed)
    again = archive_file(renamed, sha, root, "2024-03-06")
    assert again == first
    assert [e["sha256"] for e in archive_index(root)] == [sha]  # one index line, not two
    assert archived_checksums(root) == {sha}


def test_archive_refuses_bytes_other_than_those_processed(tmp_path):
    src = tmp_path / "growing.csv"
    src.write_text("admin_id\nA1\n")
    sha = sha256_file(src)
    src.write_text("admin_id\nA1\nA2\n")  # still being written when archived
    with pytest.raises(ArchiveError, match="changed after it was read"):
        archive_file(src, sha, tmp_path / "archive", "2024-03-05")
    assert archived_checksums(tmp_path / "archive") == set()
    assert not list((tmp_path / "archive").rglob("growing.csv"))


# ---------------------------------------------------------------- cross-row facts


def _reference(rows: list[dict], cfg: SiteConfig) -> list[tuple]:
    """The catalog text, literally: pairwise, in plain Python (slow, obviously right)."""
    inj = [r for r in rows if r["given"] and r["route_class"] in ("injectable", "intravenous")]
    out = []
    for r in rows:
        days = [(r["service_date"] - e["service_date"]).days for e in inj if e["patient_id"] == r["patient_id"]]
        prior = any(1 <= d <= cfg.frequency_window_days for d in days)
        first = max((d for d in days if 0 <= d <= cfg.frequency_lookback_days), default=None)
        dup = r in inj and any(
            e is not r
            and e["patient_id"] == r["patient_id"]
            and e["ingredient"] is not None
            and e["ingredient"] == r["ingredient"]
            and dt.timedelta(0)
            <= r["admin_time"] - e["admin_time"]
            <= dt.timedelta(minutes=cfg.duplicate_window_minutes)
            and (r["admin_time"] > e["admin_time"] or e["admin_id"] < r["admin_id"])
            for e in inj
        )
        out.append((prior, first, dup))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cross_row_facts_match_the_pairwise_definition(seed):
    rng = random.Random(seed)
    base = dt.datetime(2023, 1, 1, 8, 0)
    rows = []
    for i in range(400):
        t = base + dt.timedelta(days=rng.randrange(0, 500), minutes=rng.choice([0, 0, 30, 59, 60, 61, 90, 600, 1430]))
        rows.append(
            {
                "admin_id": f"A{rng.randrange(10_000):05d}-{i}",
                "patient_id": f"P{rng.randrange(6)}",
                "admin_time": t,
                "service_date": t.date(),
                "given": rng.random() < 0.85,
                "route_class": rng.choice(["injectable", "injectable", "intravenous", "self_administered"]),
                "ingredient": rng.choice(["cyanocobalamin", "cyanocobalamin", "hydroxocobalamin", None]),
            }
        )
    # Ties at the same instant, same patient and ingredient.
    rows += [{**rows[0], "admin_id": "Z-tie"}, {**rows[1], "admin_id": "0-tie"}]
    cfg = SiteConfig()
    got = add_cross_row_facts(pl.DataFrame(rows), cfg)
    assert list(
        zip(
            got["prior_injection_within_window"],
            got["days_since_first_injection"],
            got["duplicate_of_prior"],
            strict=True,
        )
    ) == _reference(rows, cfg)
    assert got["admin_id"].to_list() == [r["admin_id"] for r in rows]  # row order kept


def test_later_rows_never_change_a_rows_cross_row_facts():
    rng = random.Random(7)
    base = dt.datetime(2024, 1, 1, 9, 0)
    rows = [
        {
            "admin_id": f"A{i:03d}",
            "patient_id": f"P{rng.randrange(3)}",
            "given": True,
            "route_class": "injectable",
            "ingredient": "cyanocobalamin",
            "admin_time": base + dt.timedelta(days=rng.randrange(90), minutes=rng.randrange(0, 120)),
        }
        for i in range(200)
    ]
    for r in rows:
        r["service_date"] = r["admin_time"].date()
    cutoff = dt.date(2024, 2, 15)
    everything = add_cross_row_facts(pl.DataFrame(rows), SiteConfig()).filter(pl.col("service_date") <= cutoff)
    up_to = add_cross_row_facts(pl.DataFrame([r for r in rows if r["service_date"] <= cutoff]), SiteConfig())
    assert everything.sort("admin_id").equals(up_to.sort("admin_id"))


@pytest.mark.parametrize("rule_id", ["FREQ-001", "DUP-001"])
def test_cross_row_rule_cases(rules, rule_id):
    (rule,) = rules.ruleset.by_id(rule_id)
    results = run_rule_cases(rule, rules)
    assert len(results) >= 10
    failed = [f"{r.kind} {r.index} ({r.note}): {r.detail}" for r in results if not r.ok]
    assert not failed, failed


# ---------------------------------------------------------------- the multi-night fixture

EXPECTED_CROSS_ROW = {  # (rule, admin_id, DOS): what the fixture's docstring promises after night 5
    ("DUP-001", "MAR-5205-02", dt.date(2024, 3, 5)),
    ("FREQ-001", "MAR-5201-08", dt.date(2024, 3, 6)),
    ("FREQ-001", "MAR-5208-03", dt.date(2024, 3, 6)),
    ("DUP-001", "MAR-5206-02", dt.date(2024, 3, 7)),
}


def _cross_row(frame: pl.DataFrame) -> set[tuple]:
    return set(
        frame.filter(pl.col("rule_id").is_in(["FREQ-001", "DUP-001"]))
        .select("rule_id", "admin_id", "service_date")
        .iter_rows()
    )


@pytest.fixture(scope="module")
def nights_out(shipped_nights) -> tuple[Path, list[dict], list[pl.DataFrame]]:
    """The five nights run one by one with the shipped rules; the queues after each night."""
    return shipped_nights["out"], shipped_nights["manifests"], shipped_nights["after"]


def test_nights_find_what_the_catalog_says(nights_out):
    out, manifests, after = nights_out
    assert all(m["totals"]["files_rejected"] == 0 and m["totals"]["quarantined"] == 0 for m in manifests)
    assert _cross_row(after[-1]) == EXPECTED_CROSS_ROW
    assert set(after[-1]["rule_id"]) == {"FREQ-001", "DUP-001"}  # the fixture is clean otherwise
    # Night 2: both same-day duplicates are found; night 5's correction moves MAR-5207-02 to 03-04 and resolves one.
    assert ("DUP-001", "MAR-5207-02", dt.date(2024, 3, 5)) in _cross_row(after[1])
    assert not after[-1].filter(pl.col("admin_id") == "MAR-5207-02").height
    # Night 3 cannot know the late-charted dose of 02-20; night 5 brings it and re-evaluates 03-06.
    assert ("FREQ-001", "MAR-5208-03", dt.date(2024, 3, 6)) not in _cross_row(after[3])
    assert "2024-03-06" in manifests[-1]["dates_evaluated"]
    # The cross-midnight duplicate needs night 3's row when night 4 runs.
    assert ("DUP-001", "MAR-5206-02", dt.date(2024, 3, 7)) in _cross_row(after[3])
    moved = pl.read_parquet(next(Path(out, "history").glob("service_date=2024-03-04/*.parquet")))
    assert "MAR-5207-02" in moved["admin_id"].to_list()


def test_one_backfill_finds_the_same_as_the_nights(nights_out, tmp_path):
    from flows.backfill import run_backfill

    out, _, after = nights_out
    copy = copy_out(out, tmp_path / "copy")
    manifest = run_backfill(FIRST_DOS, LAST_DOS, str(copy), chunk_days=40)
    assert without_run_id(queue_frame(copy)).equals(without_run_id(after[-1]))
    assert _cross_row(queue_frame(copy)) == EXPECTED_CROSS_ROW
    assert manifest["diff"]["total"] == {"new": 0, "resolved": 0, "unchanged": len(after[-1])}


def test_evaluating_a_date_ignores_rows_of_later_dates(nights_out, rules, tmp_path):
    out, _, _ = nights_out
    copy = copy_out(out, tmp_path / "copy")
    day = dt.date(2024, 3, 5)
    with_later = pipeline.findings_for_dates(copy, [day], rules, "r")
    for d, p in history_paths(copy / "history").items():
        if d > day:
            shutil.rmtree(p.parent)
    assert pipeline.findings_for_dates(copy, [day], rules, "r").equals(with_later)
    # And a batch of dates gives each date what it gets alone.
    both = pipeline.findings_for_dates(out, [dt.date(2024, 3, 6), dt.date(2024, 3, 7)], rules, "r")
    alone = pl.concat(
        [pipeline.findings_for_dates(out, [d], rules, "r") for d in (dt.date(2024, 3, 6), dt.date(2024, 3, 7))]
    )
    assert both.equals(alone)


def test_evaluating_in_groups_of_patients_finds_exactly_what_one_piece_finds(nights_out, rules, monkeypatch):
    """A large read is evaluated a few patients at a time (pipeline.EVALUATE_ROWS): with groups of
    a handful of rows, the fixture's findings (FREQ-001 and DUP-001 among them) are identical,
    in the same order, to one piece's."""
    out, _, _ = nights_out
    dates = sorted(history_paths(Path(out, "history")))
    whole = pipeline.findings_for_dates(out, dates, rules, "r")
    assert {"FREQ-001", "DUP-001"} <= set(whole["rule_id"])
    for rows in (5, 40):
        monkeypatch.setattr(pipeline, "EVALUATE_ROWS", rows)
        assert pipeline.findings_for_dates(out, dates, rules, "r").equals(whole), rows
        some = whole["patient_id"].unique().sort().head(3)
        assert pipeline.findings_for_dates(out, dates, rules, "r", patients=some).equals(
            whole.filter(pl.col("patient_id").is_in(some.implode()))
        )


def test_a_night_run_twice_is_byte_identical(shipped_nights, tmp_path):
    out = copy_out(shipped_nights["two"], tmp_path / "out")  # nights 1 and 2
    before = queue_files(out)
    history = {p: p.read_bytes() for p in (out / "history").rglob("*.parquet")}
    second = run_nights(out, nights=NIGHTS[1:2])[0]
    assert queue_files(out) == before and before
    assert {p: p.read_bytes() for p in (out / "history").rglob("*.parquet")} == history
    first = json.loads((out / "runs" / second["run_id"] / "manifest.json").read_text())
    assert first["run_id"] == second["run_id"]
    # Re-running a night archives nothing twice.
    assert len(archive_index(out / "archive")) == 2


def test_a_date_is_evaluated_from_its_patients_rows_only(nights_out, rules):
    """The night reads the rows of its dates and those patients' look-back, not the whole history,
    and finds exactly what evaluating the whole look-back window finds."""
    from b12pipeline.history import read_for_dates

    out, _, _ = nights_out
    history = out / "history"
    lookback = pipeline.lookback_days(rules.config)
    for day in sorted(history_paths(history)):
        window = read_history(history, day - dt.timedelta(days=lookback), day)
        needed = read_for_dates(history, [day], lookback)
        patients = set(window.filter(pl.col("admin_time").str.starts_with(day.isoformat()))["patient_id"])
        assert set(needed["patient_id"]) == patients
        assert needed.height == window.filter(pl.col("patient_id").is_in(list(patients))).height
        whole = pipeline._findings(window, [day], rules, "r")
        assert without_run_id(pipeline.findings_for_dates(out, [day], rules, "r")).equals(without_run_id(whole))
    # With patients given, only their rows on the dates (and their look-back) are read.
    one = read_for_dates(history, [dt.date(2024, 3, 6)], lookback, pl.Series(["MRN00520008"]))
    assert set(one["patient_id"]) == {"MRN00520008"}
