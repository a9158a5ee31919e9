"""The landing folder: every entry processed, rejected with its bytes kept, or ignored by a stated
rule; nothing outside --out is ever moved or changed; the summary survives any file name."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from b12pipeline.cli import app

pytestmark = pytest.mark.usefixtures("prefect_harness")
NIGHT_CSV = "emar_2024-03-01.csv"


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def nightly(landing: Path, out: Path, night: str = "2024-03-02"):
    return invoke("nightly", "--landing", landing, "--out", out, "--night", night)


def manifest_of(out: Path) -> dict:
    newest = max((out / "runs").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime_ns)
    return json.loads(newest.read_text())


def test_a_rejected_file_never_overwrites_an_earlier_one_of_the_same_name(tmp_path):
    landing, out = tmp_path / "landing", tmp_path / "out"
    landing.mkdir()
    first, second = b"not,an,extract\n1,2,3\n", b"still,not,one\n4,5,6\n"
    (landing / "emar.csv").write_bytes(first)
    assert nightly(landing, out, "2024-03-01").exit_code == 1
    (landing / "emar.csv").write_bytes(second)
    assert nightly(landing, out, "2024-03-02").exit_code == 1
    kept = sorted(p.read_bytes() for p in (out / "rejected").glob("emar-*.csv"))
    assert kept == sorted([first, second])
    assert len(list((out / "rejected").glob("emar-*.csv.error.txt"))) == 2
    assert not (landing / "emar.csv").exists()  # out of landing once the night is recorded


def test_every_landing_entry_is_processed_rejected_or_ignored_by_a_stated_rule(tmp_path, fixtures_dir):
    landing, out = tmp_path / "landing", tmp_path / "out"
    landing.mkdir()
    good = fixtures_dir / NIGHT_CSV
    shutil.copy(good, landing / "a.csv.gz")  # a CSV under a compressed suffix
    shutil.copy(good, landing / "b.tsv")  # an unknown suffix
    shutil.copy(good, landing / ".c.csv")  # a dot-file: ignored by rule
    shutil.copy(good, landing / "d.csv.part")  # still being copied: ignored by rule
    result = nightly(landing, out)
    assert result.exit_code == 1, result.output
    manifest = manifest_of(out)
    assert {i["file"]: i["status"] for i in manifest["inputs"]} == {"a.csv.gz": "rejected", "b.tsv": "rejected"}
    assert {e["file"]: e["reason"] for e in manifest["ignored"]} == {
        ".c.csv": "hidden (dot) file",
        "d.csv.part": "still being written (*.part)",
    }
    assert "ignored .c.csv" in result.output and "d.csv.part" in result.output
    assert "nothing new" not in result.output


def test_a_symlink_in_landing_is_never_followed_moved_or_chmodded(tmp_path, fixtures_dir):
    landing, out, elsewhere = tmp_path / "landing", tmp_path / "out", tmp_path / "elsewhere"
    landing.mkdir()
    elsewhere.mkdir()
    target = elsewhere / "passwd"
    target.write_text("root:x:0:0:root:/root:/bin/bash\n")
    target.chmod(0o644)
    extract = elsewhere / "real.csv"
    shutil.copy(fixtures_dir / NIGHT_CSV, extract)
    extract.chmod(0o644)
    (landing / "passwd.csv").symlink_to(target)
    (landing / "linked.csv").symlink_to(extract)
    result = nightly(landing, out)
    assert result.exit_code == 1, result.output
    manifest = manifest_of(out)
    assert {i["file"]: i["status"] for i in manifest["inputs"]} == {"linked.csv": "rejected", "passwd.csv": "rejected"}
    assert all("symbolic link" in i["error"] for i in manifest["inputs"])
    for outside in (target, extract):  # untouched: same mode, still there
        assert stat.S_IMODE(outside.stat().st_mode) == 0o644
    assert target.read_text().startswith("root:")
    rejected = list((out / "rejected").iterdir())
    assert not any(p.is_symlink() for p in rejected)
    assert {p.name for p in rejected} == {"passwd.csv.error.txt", "linked.csv.error.txt"}  # no bytes were read
    assert not any(os.path.lexists(landing / n) for n in ("passwd.csv", "linked.csv"))  # the links, not targets


def test_a_file_name_with_rich_markup_is_read_and_printed_as_text(tmp_path, fixtures_dir):
    landing, out = tmp_path / "landing", tmp_path / "out"
    landing.mkdir()
    shutil.copy(fixtures_dir / NIGHT_CSV, landing / "[bold]night.csv")  # also a glob pattern to Polars
    (landing / "[red]bad.csv").write_text("not,an,extract\n")
    result = nightly(landing, out)
    assert result.exit_code == 1, result.output
    assert {i["file"]: i["status"] for i in manifest_of(out)["inputs"]} == {
        "[bold]night.csv": "processed",
        "[red]bad.csv": "rejected",
    }
    assert "[red]bad.csv" in result.output


def test_the_summary_prints_reasons_with_markup_as_text(capsys):
    """A reason can carry text from a header or a file name (`[/]` closes nothing: Rich raised)."""
    from b12pipeline.cli.run import print_summary

    row = {"rows_read": 0, "in_scope": 0, "out_of_scope": 0, "quarantined": 0}
    manifest = {
        "night": "2024-03-02",
        "run_id": "night-x",
        "totals": {**row, "files": 1, "files_rejected": 1},
        "inputs": [{"file": "a[/].csv", "status": "rejected", "error": "a[/].csv: column [/b] odd", **row}],
        "ignored": [{"file": "[/].part", "reason": "still being written (*.part)"}],
        "findings": {"per_queue": {"coding": 0}},
        "run_report": "runs/night-x/report.html",
    }
    print_summary(manifest, Path("out[/]"))
    printed = capsys.readouterr()
    assert "a[/].csv: column [/b] odd" in printed.err
    assert "[/].part" in printed.out


def test_a_file_rejected_for_its_quarantine_share_counts_no_rows(tmp_path, fixtures_dir):
    landing, out = tmp_path / "landing", tmp_path / "out"
    landing.mkdir()
    frame = pl.read_csv(fixtures_dir / NIGHT_CSV, infer_schema=False)
    frame.with_columns(pl.lit("yesterday").alias("admin_time")).write_csv(landing / "bad_times.csv")
    shutil.copy(fixtures_dir / NIGHT_CSV, landing / "good.csv")
    assert nightly(landing, out).exit_code == 1
    manifest = manifest_of(out)
    (rejected,) = [i for i in manifest["inputs"] if i["status"] == "rejected"]
    assert "max_quarantine_share" in rejected["error"]
    t = manifest["totals"]
    assert t["rows_read"] == t["in_scope"] + t["out_of_scope"] + t["quarantined"] == 16


def test_a_file_still_being_written_is_not_staged_and_waits_for_the_next_night(tmp_path, fixtures_dir, rules):
    """Listed (and hashed) while the writer was mid-row: the torn row is never staged; the file is
    deferred, not rejected, and not recorded, so the next night reads it whole."""
    import datetime as dt

    from b12pipeline.files import file_state, sha256_file
    from b12pipeline.pipeline import stage_file

    path = tmp_path / "landing.csv"
    shutil.copy(fixtures_dir / NIGHT_CSV, path)
    listed, sha = file_state(path), sha256_file(path)
    with open(path, "a") as fh:  # the writer goes on: half of a row
        fh.write("MAR-2001-1,ORD-2001,MRN99,CSN99,2024-03-01T09:00:00,Given,cyanocobalamin 1000 mcg/mL,3")
    result = stage_file(path, tmp_path / "out", "night-t", dt.date(2024, 3, 1), rules, sha256=sha, listed=listed)
    assert result.status == "deferred" and "still being written" in result.error
    assert result.staged == "" and result.rows_read == 0
    assert not (tmp_path / "out" / "quarantine").exists() and not (tmp_path / "out" / "staging").exists()
    again = stage_file(path, tmp_path / "out", "night-t2", dt.date(2024, 3, 2), rules, listed=file_state(path))
    assert again.status == "processed" and again.rows_read == 17
