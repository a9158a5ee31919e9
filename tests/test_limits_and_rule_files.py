"""Named hostile inputs (the table in docs/reliability.md) and hostile rule files.

Each input gets a clear rejection naming the file (and row / column where there is one), within
bounded memory; the bomb cases run in a subprocess that reports its peak memory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from b12pipeline.engine.rulefile import RuleFileError
from b12pipeline.ingest import FileRejected
from b12pipeline.ingest.read import read_extract
from b12pipeline.limits import current_limits, parse_size
from b12pipeline.rulesets import load_ruleset

PROJECT = Path(__file__).resolve().parent.parent
FIXTURE_CSV = PROJECT / "data" / "fixtures" / "emar_2024-03-01.csv"
HEADER = FIXTURE_CSV.read_text().splitlines()[0]
N_COLS = HEADER.count(",") + 1


def _csv_with_row(row: str) -> bytes:
    return (FIXTURE_CSV.read_text() + row + "\n").encode()


def _zip(data: bytes) -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("emar.csv", data)
    return sink.getvalue()


CLEAN = FIXTURE_CSV.read_bytes()
REJECTED = [
    # (case, file name, bytes, words the reason must contain)
    ("gzip CSV named .csv", "emar.csv", gzip.compress(CLEAN), "gzip-compressed"),
    ("gzip CSV named .csv.gz", "emar.csv.gz", gzip.compress(CLEAN), "compressed extracts (.gz)"),
    ("bzip2 CSV", "emar.csv", bz2.compress(CLEAN), "bzip2-compressed"),
    ("xz CSV", "emar.csv", lzma.compress(CLEAN), "xz-compressed"),
    ("zip CSV", "emar.csv", _zip(CLEAN), "zip-compressed"),
    ("empty file", "emar.csv", b"", "empty"),
    ("header only, wrong delimiter", "emar.csv", HEADER.replace(",", ";").encode() + b"\n", "delimiter"),
    (
        "row with more fields than the header",
        "emar.csv",
        _csv_with_row(",".join(["x"] * (N_COLS + 1))),
        "data row 17 has 33 fields",
    ),
    (
        "unclosed quote at the end",
        "emar.csv",
        _csv_with_row('"MAR-9,' + ",".join(["x"] * (N_COLS - 1))),
        "data row 17: an unclosed quote",
    ),
    (
        "enormous field (5,000 bytes) holding line breaks: an unclosed quote",
        "emar.csv",
        _csv_with_row('"' + "y\n" * 2500 + '",' + ",".join(["x"] * (N_COLS - 1))),
        "data row 17, column admin_id: a value over the limit of 4K (B12_MAX_FIELD_BYTES) holding line breaks",
    ),
    ("repeated column name", "emar.csv", CLEAN.replace(b"route,", b"route,route,", 1), "duplicate column"),
    ("Parquet bytes that are not Parquet", "emar.parquet", b"PAR1" + b"\0" * 100, "not a readable Parquet"),
    ("unknown extension", "emar.xlsx", CLEAN, "cannot tell the format"),
]


@pytest.mark.parametrize("case,name,data,expected", REJECTED, ids=[c[0] for c in REJECTED])
def test_hostile_file_is_rejected_with_a_clear_reason(tmp_path, case, name, data, expected):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(FileRejected) as caught:
        read_extract(path)
    assert str(caught.value).startswith(str(path))
    assert expected in caught.value.reason, caught.value.reason


ACCEPTED = [
    # (case, bytes, rows read) - odd but readable: nothing may be lost
    ("UTF-8 byte-order mark", b"\xef\xbb\xbf" + CLEAN, 16),
    ("CRLF line endings", CLEAN.replace(b"\n", b"\r\n"), 16),
    ("blank lines between rows", CLEAN.replace(b"\n", b"\n\n", 3), 19),
    ("invalid UTF-8 in a value", CLEAN.replace(b"left deltoid", b"left \xff\xfe deltoid", 1), 16),
    ("quoted newline inside a value", CLEAN.replace(b"left deltoid", b'"left\ndeltoid"', 1), 16),
]


def test_one_over_long_value_quarantines_its_row_and_the_rest_is_read(tmp_path):
    path = tmp_path / "emar.csv"
    path.write_bytes(_csv_with_row(",".join(["MAR-9-1", "P9", "E9", "z" * 5000] + ["x"] * (N_COLS - 4))))
    extract = read_extract(path)
    assert extract.rows == 17 and extract.frame.height == 16
    (held,) = extract.quarantine.iter_rows(named=True)
    assert held["source_row"] == 17 and held["admin_id"] == "MAR-9-1"
    assert held["failed_expectations"] == ["value_within_length_limit"]
    assert "over the limit of 4K" in held["failure_reasons"] and "z" * 10 not in held["failure_reasons"]


@pytest.mark.parametrize("case,data,rows", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_odd_but_readable_file_keeps_every_row(tmp_path, case, data, rows):
    path = tmp_path / "emar.csv"
    path.write_bytes(data)
    assert read_extract(path).rows == rows


def test_file_size_limit_rejects_before_reading(tmp_path):
    """A 2 GiB sparse file: refused from its size alone (nothing is read, nothing allocated)."""
    path = tmp_path / "huge.csv"
    with open(path, "wb") as fh:
        fh.truncate(2 << 30)
    with pytest.raises(FileRejected, match="over the limit of 1G"):
        read_extract(path)


def test_limits_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("B12_MAX_FILE_BYTES", "1K")
    monkeypatch.setenv("B12_MAX_FIELD_BYTES", "64")
    assert current_limits().max_file_bytes == 1024 and current_limits().max_field_bytes == 64
    path = tmp_path / "emar.csv"
    path.write_bytes(CLEAN)
    with pytest.raises(FileRejected, match="B12_MAX_FILE_BYTES"):
        read_extract(path)
    monkeypatch.setenv("B12_MAX_FILE_BYTES", "1M")
    with pytest.raises(FileRejected, match="data row 1, column medication_name"):  # 46 chars ok, then...
        monkeypatch.setenv("B12_MAX_FIELD_BYTES", "40")
        read_extract(path)
    monkeypatch.setenv("B12_MAX_ROWS", "10")
    monkeypatch.setenv("B12_MAX_FIELD_BYTES", "4K")
    with pytest.raises(FileRejected, match="16 data rows, over the limit of 10"):
        read_extract(path)
    with pytest.raises(ValueError, match="B12_MAX_ROWS='ten'"):
        parse_size("ten", "B12_MAX_ROWS")


BOMB = """
import json, resource, sys
import pyarrow as pa, pyarrow.parquet as pq
from b12pipeline.ingest import FileRejected
from b12pipeline.ingest.read import read_extract
kind, path = sys.argv[1], sys.argv[2]
header = open(sys.argv[3]).read().splitlines()[0].split(",")
if kind == "parquet-dictionary":
    # 49 KB on disk, 50 GB once decoded: one 100 KB value repeated on 500,000 rows
    n = 500_000
    site = pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int32()), pa.array(["x" * 100_000]))
    pq.write_table(pa.table({c: site if c == "site" else pa.array(["1"] * n) for c in header}), path,
                   compression="zstd")
    del site
elif kind == "csv-field":
    # a 256 MB single value (an unclosed quote swallowing the rest of a file looks like this)
    with open(path, "w") as fh:
        fh.write(",".join(header) + "\\n" + "MAR-1," + "z" * (256 << 20) + "\\n")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_extract(path)
    outcome = "read"
except FileRejected as exc:
    outcome = exc.reason
print(json.dumps({"outcome": outcome, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.parametrize(
    "kind,name,expected,peak_mb",
    [
        ("parquet-dictionary", "bomb.parquet", "bytes of text once decoded, over the limit of 4G", 1024),
        # one long value without line breaks is that row's problem: read, the row quarantined
        ("csv-field", "field.csv", "read", 3072),
    ],
)
@pytest.mark.slow  # writes and refuses a 256 MB field and a 50 GB-when-decoded Parquet in a child process
def test_bombs_are_refused_within_bounded_memory(tmp_path, kind, name, expected, peak_mb):
    done = subprocess.run(
        [sys.executable, "-c", BOMB, kind, str(tmp_path / name), str(FIXTURE_CSV)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert expected in report["outcome"], report
    assert report["peak_mb"] < peak_mb, report


# --- rule files are data -------------------------------------------------------------------------


def _rules_copy(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(PROJECT / "rules", target)
    return target


RULE = (PROJECT / "rules" / "coding" / "UNITS-001.yaml").read_text()
HOSTILE_RULES = [
    ("python object tag", "!!python/object/apply:os.system ['touch /tmp/b12-pwned']\n", "not valid (safe) YAML"),
    (
        "python tag inside a field",
        RULE.replace('version: "1"', 'version: !!python/name:os.getcwd ""'),
        "not valid (safe) YAML",
    ),
    ("unknown field", RULE + "run: rm -rf /\n", "run: unknown field"),
    (
        "unknown operator",
        RULE.replace("ne: {field: expected_units}", "exec: {field: expected_units}"),
        "unknown operator 'exec'",
    ),
    ("operand that is not a value", RULE.replace("eq: J3420", "eq: {python: J3420}"), "operand must be"),
    (
        "combinator not alone",
        RULE.replace("  all:\n", "  all:\n", 1).replace("when:\n  all:", "when:\n  any: []\n  all:"),
        "must stand alone",
    ),
    ("bad queue", RULE.replace("queue: coding", "queue: ../../etc"), "queue: '../../etc' is not one of"),
    ("not a mapping", "- just\n- a list\n", "must be a mapping"),
    (
        "billion laughs",
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
        "YAML aliases (*a) are not accepted",
    ),
    (
        "impossible date",
        RULE.replace("status: active", "status: active\neffective_from: 2024-13-45"),
        "not valid (safe) YAML",
    ),
    (
        "date that is not a date",
        RULE.replace("status: active", "status: active\neffective_from: soon"),
        "effective_from: 'soon' is not a date",
    ),
    ("not UTF-8", None, "not valid (safe) YAML"),
]


def _alias_bomb(depth: int) -> str:
    """A 2 KB rule whose `when:` doubles at every level through anchors (2**depth leaves)."""
    levels = ["x0: &a0 {field: charge_units, is_null: false}"]
    levels += [f"x{i}: &a{i} {{all: [*a{i - 1}, *a{i - 1}]}}" for i in range(1, depth + 1)]
    body = RULE.split("when:")[0] + "anchors:\n" + "".join(f"  {line}\n" for line in levels)
    return body + f"when: *a{depth}\n" + "cases:" + RULE.split("cases:", 1)[1]


def _with_when(condition: str) -> str:
    return RULE.split("when:")[0] + f"when: {condition}\n" + "cases:" + RULE.split("cases:", 1)[1]


BOMB_RULES = [
    ("aliases nested in when (2**12 leaves)", _alias_bomb(12), "YAML aliases (*a"),
    ("3000 nested not", _with_when("{not: " * 3000 + "{field: x, is_null: true}" + "}" * 3000), "nest"),
    ("40 nested not", _with_when("{not: " * 40 + "{field: x, is_null: true}" + "}" * 40), "nested deeper than 32"),
    (
        "invalid regex in matches",
        RULE.replace("{field: charge_units, is_null: false}", "{field: charge_hcpcs, matches: 'J34(20'}", 1),
        "matches is not a valid regular expression",
    ),
]


@pytest.mark.parametrize("case,text,expected", BOMB_RULES, ids=[c[0] for c in BOMB_RULES])
def test_rule_file_bombs_are_refused_at_load_quickly(tmp_path, case, text, expected):
    import time

    rules = _rules_copy(tmp_path)
    target = rules / "coding" / "UNITS-001.yaml"
    target.write_text(text)
    started = time.perf_counter()
    with pytest.raises(RuleFileError) as caught:
        load_ruleset(rules)
    assert time.perf_counter() - started < 5
    assert str(target) in str(caught.value) and expected in str(caught.value), str(caught.value)


def test_a_rule_that_fails_stops_the_run_before_history_changes(tmp_path, fixtures_dir):
    """An invalid pattern: refused at the CLI's preflight (exit 2) and by the flow's own load,
    before any file is read; nothing is written under --out."""
    from typer.testing import CliRunner

    from b12pipeline.cli import app
    from b12pipeline.pipeline import Rules

    rules = _rules_copy(tmp_path)
    target = rules / "coding" / "UNITS-001.yaml"
    target.write_text(BOMB_RULES[-1][1])
    out = tmp_path / "out"
    extract = str(fixtures_dir / "emar_2024-03-01.csv")
    done = CliRunner().invoke(app, ["run", "--extract", extract, "--out", str(out), "--rules", str(rules)])
    assert done.exit_code == 2 and "UNITS-001.yaml" in done.output, done.output
    assert not (out / "history").exists()
    with pytest.raises(RuleFileError, match="UNITS-001.yaml"):
        Rules.load(rules)


@pytest.mark.parametrize("case,text,expected", HOSTILE_RULES, ids=[c[0] for c in HOSTILE_RULES])
def test_hostile_rule_file_is_refused_by_the_loader(tmp_path, case, text, expected):
    rules = _rules_copy(tmp_path)
    target = rules / "coding" / "UNITS-001.yaml"
    if text is None:
        target.write_bytes(RULE.encode().replace(b"title:", b"title: \xff\xfe", 1))
    else:
        target.write_text(text)
    with pytest.raises(RuleFileError) as caught:
        load_ruleset(rules)
    assert str(target) in str(caught.value) and expected in str(caught.value), str(caught.value)
    assert not Path("/tmp/b12-pwned").exists()
