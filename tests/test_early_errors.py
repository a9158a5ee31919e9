"""Errors that need no data are reported before Prefect or Great Expectations start: one line with
the file, line and column where there is one, exit 2, no traceback, nothing written under --out."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
EXTRACT = PROJECT / "data" / "fixtures" / "emar_2024-03-01.csv"


def cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """The real CLI in a child process, with -X importtime: its stderr lists every module imported."""
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect_home"), COLUMNS="80")
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "from b12pipeline.cli import main; main()", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def split_stderr(proc: subprocess.CompletedProcess) -> tuple[list[str], set[str]]:
    """(the lines the user sees, the top-level packages imported)."""
    shown, imported = [], set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:"):
            imported.add(line.rsplit("|", 1)[1].strip().split(".")[0])
        elif line.strip():
            shown.append(line)
    return shown, imported


def broken_rules(tmp_path: Path, severity: str) -> tuple[Path, Path]:
    """A copy of the rules with one rule file's severity line replaced."""
    rules = tmp_path / "rules"
    shutil.copytree(PROJECT / "rules", rules)
    path = sorted((rules / "coding").glob("*.yaml"))[0]
    text = path.read_text()
    path.write_text(re.sub(r"(?m)^severity: .*$", f"severity: {severity}", text, count=1))
    return rules, path


def line_of(path: Path, starts: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(starts))


def assert_reported_before_the_flow(proc, tmp_path: Path, out: Path) -> str:
    shown, imported = split_stderr(proc)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(shown) == 1, shown
    assert "Traceback" not in proc.stderr and "Error:" not in shown[0].split("error:", 1)[0]
    assert not {"prefect", "great_expectations"} & imported  # neither was even imported
    assert not out.exists()
    assert not (tmp_path / "prefect_home").exists() or not any((tmp_path / "prefect_home").iterdir())
    return shown[0]


def test_malformed_rule_file_is_one_line_with_line_and_column_before_the_flow(tmp_path):
    rules, path = broken_rules(tmp_path, "error: high")  # a second ': ' inside a plain value
    out = tmp_path / "out"
    args = ["run", "-e", str(EXTRACT), "--rules", str(rules), "--out", str(out), "--night", "2024-03-01"]
    line = assert_reported_before_the_flow(cli(args, tmp_path), tmp_path, out)
    column = len("severity: error:")  # 1-based column of the offending colon
    assert f"{path}:{line_of(path, 'severity:')}:{column}: yaml: not valid (safe) YAML" in line, line


def test_rule_field_error_names_the_line_and_column_of_the_value(tmp_path):
    rules, path = broken_rules(tmp_path, "loud")
    out = tmp_path / "out"
    args = ["nightly", "--landing", str(tmp_path), "--rules", str(rules), "--out", str(out)]
    line = assert_reported_before_the_flow(cli(args, tmp_path), tmp_path, out)
    assert f"{path}:{line_of(path, 'severity:')}:11: severity: 'loud' is not one of" in line, line


@pytest.mark.parametrize(
    "args, says",
    [
        (["run", "-e", "missing.csv"], "no such file: missing.csv"),
        (["run", "-e", str(EXTRACT), "--night", "2024-02-30"], "--night '2024-02-30' is not a date"),
        (["run", "-e", str(EXTRACT), "--engine", "drools"], "--engine drools: unknown engine"),
        (["run", "-e", str(EXTRACT), "--rules", "nowhere"], "--rules nowhere is not a folder"),
    ],
)
def test_data_free_usage_errors_come_before_the_flow(tmp_path, args, says):
    out = tmp_path / "out"
    line = assert_reported_before_the_flow(cli([*args, "--out", str(out)], tmp_path), tmp_path, out)
    assert says in line


@pytest.mark.slow
def test_temporary_server_that_cannot_start_is_one_line_exit_4(tmp_path):
    """Prefect's own failure is a RuntimeError traceback after 20 s; the CLI tries twice, then says what to do."""
    env = dict(
        os.environ, PREFECT_HOME=str(tmp_path / "prefect_home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0"
    )
    env.pop("PREFECT_API_URL", None)
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "b12pipeline"), "run", "-e", str(EXTRACT), "--out", str(out), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, lines
    assert "Prefect's temporary server did not start" in lines[0] and "tried twice" in lines[0]
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in lines[0] and "PREFECT_API_URL" in lines[0]
    assert not (out / "queues").exists()
