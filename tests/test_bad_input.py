"""Bad input, generated: any bytes or values end in a processed file whose every row is accounted for
(rows read = in scope + out of scope + quarantined), or in a clear rejection naming the file with the
file kept intact in rejected/. Never a crash, never a silently dropped row.

Example counts stay modest (GX costs ~0.4 s per validated file); the shrunk counter-examples that
these tests found while being written are pinned as explicit @example cases.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import tempfile
from contextlib import contextmanager
from pathlib import Path

import fixture_scripts
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from b12pipeline import normalize
from b12pipeline.contract import load_contract
from b12pipeline.crossrow import add_cross_row_facts
from b12pipeline.engine.evaluate import evaluate
from b12pipeline.history import read_history
from b12pipeline.ingest import FileRejected
from b12pipeline.ingest.read import read_extract
from b12pipeline.pipeline import Rules, stage_file
from b12pipeline.validate import validate

CONTRACT = load_contract()
COLUMNS = CONTRACT.names
REQUIRED = CONTRACT.required_in_file
NIGHT = dt.date(2024, 3, 2)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_STAGED_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def STAGED(test):  # named like the settings object beside it
    """40 Hypothesis examples, each staged through GX validation: tens of seconds per test."""
    return pytest.mark.slow(_STAGED_SETTINGS(test))


# A realistic value per column (a clean B12 administration) that generated rows start from.
CLEAN = {
    **fixture_scripts.load("clean_administration").CLEAN,
    "admin_id": "MAR-1",
    "patient_id": "MRN1",
    "encounter_id": "CSN1",
    "admin_time": "2024-03-01T08:05:00",
    "payer_id": "",
}
MEDICATIONS = [
    "cyanocobalamin 1000 mcg/mL inj",
    "Hydroxocobalamin 1 mg/mL",
    "VITAMIN B-12 INJ",
    "methylcobalamin",
    "ondansetron 4 mg/2 mL injection",
    "ceftriaxone 1 g",
    "",
]
NASTY = [
    "",
    " ",
    "\t",
    '"',
    '""',
    ",",
    ";",
    "\n",
    "\r\n",
    "\r",
    "0",
    "-1",
    "1e308",
    "NaN",
    "inf",
    "١٢٣",
    "2024-02-30T10:00",
    "2024-03-01 25:61",
    "9999-12-31T23:59:59",
    "0000-01-01T00:00",
    "2024-03-01T10:00:00+14:00",
    "0517-0031-25",
    "00517003125",
    "0517003125",
    "J3420",
    "j3420 ",
    "D51.0;E53.8",
    "....",
    "\x00",
    "\ufeff",
    "\u202e",
    "😀",
    "DROP TABLE",
    "=cmd|' /C calc'!A0",
    "None",
    "null",
    "NULL",
    "true",
    "1,000",
    "１０００",
]

text_value = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
)


@st.composite
def records(draw, n_max: int = 12) -> list[dict]:
    """Rows that start clean and have any subset of fields replaced by arbitrary text."""
    n = draw(st.integers(0, n_max))
    rows = []
    for i in range(n):
        row = dict(CLEAN, admin_id=f"MAR-{i}", medication_name=draw(st.sampled_from(MEDICATIONS)))
        broken = draw(st.lists(st.sampled_from(COLUMNS), max_size=4, unique=True)) if draw(st.booleans()) else []
        for col in broken:
            row[col] = draw(text_value)
        rows.append(row)
    return rows


@st.composite
def csv_files(draw) -> tuple[bytes, int]:
    """A CSV written by the csv module (always well-formed), with a varied header and line endings."""
    rows = draw(records())
    optional = [c for c in COLUMNS if c not in REQUIRED]
    dropped = set(draw(st.lists(st.sampled_from(optional), max_size=5, unique=True)))
    header = [c for c in COLUMNS if c not in dropped] + draw(
        st.lists(st.sampled_from(["notes", "Extra Col"]), max_size=2, unique=True)
    )
    header = draw(st.permutations(header))
    spelled = [draw(st.sampled_from([c, c.upper(), f" {c} ", c.title()])) for c in header]
    buf = io.StringIO()
    writer = csv.writer(
        buf,
        lineterminator=draw(st.sampled_from(["\n", "\r\n"])),
        quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])),
    )
    writer.writerow(spelled)
    for r in rows:
        writer.writerow([r.get(c.strip().lower(), "x") for c in header])
    bom = draw(st.sampled_from([b"", b"\xef\xbb\xbf"]))
    return bom + buf.getvalue().encode("utf-8"), len(rows)


@pytest.fixture(scope="module")
def rules_once() -> Rules:
    return Rules.load()


@pytest.fixture(scope="module")
def rules_lenient(rules_once) -> Rules:
    """No file-level quarantine-share rejection, so accounting is checked on every generated row."""
    return dataclasses.replace(rules_once, config=dataclasses.replace(rules_once.config, max_quarantine_share=1.0))


def _assert_accounted(
    result, path: Path, out: Path, expected_rows: int | None, rules: Rules, source: str | None = None
) -> None:
    """Every row read is in scope (staged), out of scope, or in quarantine; a rejected file is kept whole."""
    event(f"{result.status}: {result.error.split(': ', 1)[-1][:40]}" if result.error else result.status)
    if result.status == "rejected":
        assert result.error.startswith(str(path)), result.error
        kept = out / "rejected" / result.rejected_as
        assert kept.read_bytes() == path.read_bytes(), "a rejected file must be kept intact"
        assert (out / "rejected" / f"{result.rejected_as}.error.txt").is_file()
        return
    assert result.status == "processed"
    assert result.rows_read == result.in_scope + result.out_of_scope + result.quarantined
    if expected_rows is not None:
        assert result.rows_read == expected_rows, "a row was dropped or invented while reading"
    quarantine = [pl.read_parquet(p) for p in (out / "quarantine").rglob("*.parquet")]
    assert sum(q.height for q in quarantine) == result.quarantined
    # Read the file again, apart from staging: every B12 row not in quarantine is an administration
    # that history must hold once.
    scope = normalize.b12_scope(rules.reference)
    read = read_extract(path, source, keep=scope, time_zone=rules.config.time_zone).frame
    held = pl.concat([q.select("source_row") for q in quarantine]) if quarantine else read.clear().select("source_row")
    kept = read.filter(~pl.col("source_row").is_in(held["source_row"].implode()))
    # A staged folder is laid out as history is: its rows read back the same way.
    staged = read_history(Path(result.staged)) if result.staged else read.clear()
    assert staged["admin_id"].is_unique().all(), "an administration staged twice"
    assert sorted(staged["admin_id"]) == sorted(kept["admin_id"].unique()), "an administration lost or invented"
    assert kept.height == result.in_scope
    assert staged.height + result.superseded_in_file == result.in_scope


@contextmanager
def _stage(data: bytes, name: str, rules: Rules, source: str | None = None):
    """Stage `data` as a file in a temporary folder, removed after the example (Hypothesis runs
    hundreds of examples per test: one folder each would fill /tmp)."""
    with tempfile.TemporaryDirectory(prefix="b12-badinput-") as name_of_tmp:
        tmp = Path(name_of_tmp)
        path = tmp / name
        path.write_bytes(data)
        out = tmp / "out"
        yield stage_file(path, out, "night-test", NIGHT, rules, source=source), path, out


# --- CSV -----------------------------------------------------------------------------------------


@STAGED
@given(csv_files())
def test_generated_csv_rows_are_all_accounted_for(rules_lenient, generated):
    data, n_rows = generated
    with _stage(data, "gen.csv", rules_lenient) as (result, path, out):
        _assert_accounted(result, path, out, n_rows, rules_lenient)


@FAST
@given(st.binary(max_size=400))
@example(b"")
@example(b"\x1f\x8b\x08\x00")  # gzip magic
@example(b"admin_id\r1\r2\r")  # bare CR line endings
def test_any_bytes_are_read_or_rejected_naming_the_file(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "junk.csv"
        path.write_bytes(data)
        try:
            extract = read_extract(path)
        except FileRejected as exc:
            event(f"rejected: {exc.reason[:40]}")
            assert str(exc).startswith(str(path)) and exc.reason
        else:
            # read: the canonical frame, every contract column as text, each row numbered once
            frame = extract.frame
            assert set(COLUMNS) <= set(frame.columns)
            assert all(frame.schema[c] == pl.String for c in COLUMNS)
            assert frame["source_row"].is_unique().all() and set(frame["source_file"]) <= {"junk.csv"}


HEADER = ",".join(COLUMNS).encode()


@STAGED
@given(st.binary(max_size=600))
@example(b"\n\n\n")
@example(b'"unclosed,' + b"x," * 40 + b"\n")
@example(b"a," * 40 + b"\n")  # more fields than the header
def test_any_bytes_after_a_valid_header_are_accounted_for(rules_lenient, body):
    with _stage(HEADER + b"\n" + body, "body.csv", rules_lenient) as (result, path, out):
        _assert_accounted(result, path, out, None, rules_lenient)


# --- Parquet -------------------------------------------------------------------------------------

PARQUET_VALUES = {
    "text": lambda: text_value,
    "int": lambda: st.integers(-(2**63), 2**63 - 1),
    "float": lambda: st.floats(allow_nan=True, allow_infinity=True),
    "bool": lambda: st.booleans(),
    "date": lambda: st.dates(),
    "datetime": lambda: st.datetimes(),
    "datetime_tz": lambda: st.datetimes(timezones=st.just(dt.timezone.utc)),
    "list": lambda: st.lists(st.text(max_size=5), max_size=3),
}


@st.composite
def parquet_tables(draw) -> tuple[pa.Table, int]:
    """Contract columns with arbitrary Parquet types and values (what a typed export might carry)."""
    n = draw(st.integers(0, 10))
    columns = {}
    for col in COLUMNS:
        kind = draw(st.sampled_from(list(PARQUET_VALUES))) if draw(st.integers(0, 3)) == 0 else "clean"
        if kind == "clean":
            values = [MEDICATIONS[i % len(MEDICATIONS)] if col == "medication_name" else CLEAN[col] for i in range(n)]
        else:
            values = draw(st.lists(st.one_of(st.none(), PARQUET_VALUES[kind]()), min_size=n, max_size=n))
        try:
            columns[col] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            columns[col] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(columns), n


@STAGED
@given(parquet_tables())
def test_generated_parquet_rows_are_all_accounted_for(rules_lenient, generated):
    table, n_rows = generated
    sink = io.BytesIO()
    pq.write_table(table, sink)
    with _stage(sink.getvalue(), "gen.parquet", rules_lenient) as (result, path, out):
        _assert_accounted(result, path, out, n_rows, rules_lenient)


@FAST
@given(st.data())
def test_damaged_parquet_is_rejected_naming_the_file(fixtures_dir_static, data):
    whole = (fixtures_dir_static / "emar_2024-03-02.parquet").read_bytes()
    cut = data.draw(st.integers(0, len(whole) - 1))
    flip = data.draw(st.integers(0, len(whole) - 1))
    damaged = bytearray(whole[:cut] if data.draw(st.booleans()) else whole)
    if damaged and flip < len(damaged):
        damaged[flip] ^= 0xFF
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.parquet"
        path.write_bytes(bytes(damaged))
        try:
            extract = read_extract(path)
        except FileRejected as exc:
            assert str(exc).startswith(str(path))
        else:  # a flipped byte inside a value can leave a readable file: then no row may be lost
            assert extract.frame.height == pq.read_metadata(path).num_rows


def test_parquet_pages_that_stop_polars_reader_reject_the_file(fixtures_dir_static, tmp_path):
    """One flipped byte at these offsets of the fixture makes Polars' Parquet reader panic (a
    BaseException, not an Exception): each is a rejected file naming it, never a crash."""
    whole = (fixtures_dir_static / "emar_2024-03-02.parquet").read_bytes()
    path, said = tmp_path / "damaged.parquet", []
    for flip in (799, 801, 1764, 2808, 2810, 4348, 7223):
        damaged = bytearray(whole)
        damaged[flip] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            read_extract(path)
        except FileRejected as exc:
            assert str(exc).startswith(str(path))
            said.append(str(exc))
    assert any("data pages are damaged" in s for s in said), said


@pytest.fixture(scope="module")
def fixtures_dir_static() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "fixtures"


# --- Normalisers ---------------------------------------------------------------------------------


def _canonical(rows: list[dict]) -> pl.DataFrame:
    frame = pl.DataFrame(
        [{c: (r.get(c) or None) for c in COLUMNS} for r in rows], schema={c: pl.String for c in COLUMNS}
    )
    return frame.with_columns(
        pl.lit("gen.csv").alias("source_file"),
        (pl.int_range(pl.len(), dtype=pl.Int64) + 1).alias("source_row"),
        pl.lit(True).alias("has_charge_hcpcs"),
        pl.lit(True).alias("has_admin_cpt"),
    )


@pytest.mark.slow  # 60 generated frames through every normaliser and the facts
@FAST
@given(records(n_max=15))
@example([dict(CLEAN, dose_value="1e308", dose_unit="mg")])  # inf mcg: crashed the cast to units
@example([dict(CLEAN, dose_value="9" * 24)])  # passes validation, > Int64 units
@example([dict(CLEAN, admin_time="9999-12-31T23:59:59", expiration_date="0001-01")])
def test_normalisers_take_any_text_one_row_in_one_row_out(rules_once, rows):
    """facts() on any text (validated or not) keeps every row and never raises; the rules run on it."""
    frame = _canonical(rows)
    facts = normalize.facts(frame, rules_once.reference, rules_once.config)
    assert facts.height == frame.height
    assert sorted(facts["source_row"].to_list()) == list(range(1, frame.height + 1))
    facts = add_cross_row_facts(facts, rules_once.config)
    findings = evaluate(facts, rules_once.ruleset, rules_once.config, "night-test")
    assert set(findings["source_row"].to_list()) <= set(facts["source_row"].to_list())


@STAGED
@given(records(n_max=15))
def test_validation_splits_every_row_exactly_once(rows):
    frame = _canonical(rows)
    outcome = validate(frame)
    assert outcome.valid.height + outcome.quarantine.height == frame.height
    rows_seen = outcome.valid["source_row"].to_list() + outcome.quarantine["source_row"].to_list()
    assert sorted(rows_seen) == list(range(1, frame.height + 1))
    assert all(outcome.quarantine["failure_reasons"].to_list())


# --- Clarity-style CSV and FHIR NDJSON (the source readers) --------------------------------------

SOURCES = Path(__file__).resolve().parent.parent / "data" / "fixtures" / "sources"
CLARITY_ROWS = list(csv.reader(io.StringIO((SOURCES / "emar_2024-03-01.clarity.csv").read_text())))
FHIR_LINES = (SOURCES / "emar_2024-03-01.fhir.ndjson").read_text().splitlines()


@st.composite
def clarity_files(draw) -> tuple[bytes, int]:
    header, body = CLARITY_ROWS[0], CLARITY_ROWS[1:]
    rows = [list(draw(st.sampled_from(body))) for _ in range(draw(st.integers(0, 12)))]
    for row in rows:
        if draw(st.booleans()):
            for i in draw(st.lists(st.integers(0, len(header) - 1), max_size=4, unique=True)):
                row[i] = draw(text_value)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows([header, *rows])
    return buf.getvalue().encode(), len(rows)


@STAGED
@given(clarity_files())
def test_generated_clarity_rows_are_all_accounted_for(rules_lenient, generated):
    data, n_rows = generated
    with _stage(data, "gen.clarity.csv", rules_lenient) as (result, path, out):
        assert result.status == "rejected" or result.source_format == "clarity"
        _assert_accounted(result, path, out, n_rows, rules_lenient)


def _json_mutation(line: str) -> st.SearchStrategy[str]:
    import json as _json

    def set_value(value, key):
        res = _json.loads(line)
        res[key] = value
        return _json.dumps(res)

    keys = list(_json.loads(line))
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | text_value,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=6,
    )
    return st.one_of(
        st.just(line),
        st.builds(set_value, json_values, st.sampled_from(keys + ["id", "status", "effectiveDateTime", "dosage"])),
        text_value.map(lambda t: t.replace("\n", " ").replace("\r", " ")),  # not JSON at all
    )


@st.composite
def fhir_files(draw) -> tuple[bytes, int]:
    lines = [draw(_json_mutation(draw(st.sampled_from(FHIR_LINES)))) for _ in range(draw(st.integers(1, 10)))]
    return ("\n".join(lines) + "\n").encode(), len(lines)


@STAGED
@given(fhir_files())
def test_generated_fhir_resources_are_all_accounted_for(rules_lenient, generated):
    data, n_lines = generated
    with _stage(data, "gen.ndjson", rules_lenient) as (result, path, out):
        _assert_accounted(result, path, out, n_lines, rules_lenient)
