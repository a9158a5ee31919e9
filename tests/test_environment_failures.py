"""The machine failing the run (read-only --out, a full disk, a landing file gone): one clear line,
exit code 4 (EXIT_ENVIRONMENT), no traceback; never exit 1, which means a file was rejected."""

from __future__ import annotations

import datetime as dt
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from b12pipeline.cli.common import EXIT_ENVIRONMENT, environment_problem

CLI = str(Path(sys.executable).parent / "b12pipeline")


@pytest.fixture(scope="module")
def cli_env(prefect_harness) -> dict:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING"}


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder no file can be created in: sysfs when running as root (root ignores modes)."""
    if os.geteuid() == 0:
        return Path("/sys/kernel")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def _run_night(extract: Path, out: Path, env: dict, **options) -> subprocess.CompletedProcess:
    """`b12pipeline run` of `extract` as night 2024-03-01 into `out`, its output captured."""
    command = [CLI, "run", "--extract", str(extract), "--out", str(out), "--night", "2024-03-01"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, **options)


def _assert_one_clear_line(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == EXIT_ENVIRONMENT, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    line = [row for row in done.stderr.splitlines() if row.startswith("environment:")]
    assert len(line) == 1, done.stderr[-2000:]
    for word in words:
        assert word in line[0], line


def test_a_read_only_out_is_one_line_and_exit_4(tmp_path, fixtures_dir, cli_env):
    out = _read_only_folder(tmp_path)
    done = _run_night(fixtures_dir / "emar_2024-03-01.csv", out, cli_env)
    _assert_one_clear_line(done, ".lock")


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_exit_4(tmp_path, fixtures_dir, cli_env):
    """A file-size limit makes the kernel refuse writes past 64 KB (EFBIG), as a full disk refuses
    them (ENOSPC): the night's first large write fails."""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write is an error, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    big = tmp_path / "emar_big.csv"
    lines = (fixtures_dir / "emar_2024-03-01.csv").read_text().splitlines()
    big.write_text("\n".join([lines[0]] + [f"X{i}{row}" for i in range(300) for row in lines[1:]]) + "\n")
    done = _run_night(big, tmp_path / "out", cli_env, preexec_fn=limit_file_size)
    _assert_one_clear_line(done, str(tmp_path / "out"), "file too large")


def test_a_landing_file_gone_mid_run_stops_the_night_as_an_environment_failure(prefect_harness, tmp_path):
    """Another run sharing the landing folder took the file: not a rejection (exit 1), and nothing
    is written to rejected/ for bytes this run never had."""
    from flows.nightly import nightly_flow

    gone = tmp_path / "landing" / "emar.csv"
    with pytest.raises(FileNotFoundError) as caught:
        nightly_flow(extracts=[str(gone)], out=str(tmp_path / "out"), night=dt.date(2024, 3, 1), move_rejected=True)
    assert not (tmp_path / "out" / "rejected").exists()
    line = environment_problem(caught.value)
    assert line and str(gone) in line and "no longer there" in line


def test_expected_failures_are_dropped_and_others_lose_their_traceback_whatever_the_handlers():
    """Records are changed where they are made: a handler installed inside the block (as Prefect does
    when a flow starts) still gets no traceback and no record of a failure the command reports itself."""
    import io
    import logging

    from b12pipeline.cli.common import no_console_tracebacks

    class Expected(Exception):
        pass

    stream = io.StringIO()
    logger = logging.getLogger("prefect.flow_runs.expected_test")
    logger.propagate, logger.level = False, logging.INFO
    with no_console_tracebacks(Expected):
        handler = logging.StreamHandler(stream)  # level NOTSET: emits whatever it is given
        logger.addHandler(handler)
        try:
            for exc in (Expected("source down"), ValueError("bad value")):
                try:
                    raise exc
                except Exception:
                    logger.exception("task failed with %s", type(exc).__name__)
            logger.error("Finished in state Failed('Expected: source down')")
            logging.getLogger("b12pipeline.expected_test").addHandler(handler)
            try:
                raise Expected("ours")
            except Expected:
                logging.getLogger("b12pipeline.expected_test").exception("not Prefect's: left alone")
        finally:
            logger.removeHandler(handler)
            logging.getLogger("b12pipeline.expected_test").removeHandler(handler)
    text = stream.getvalue()
    assert "Expected" not in text.split("not Prefect's")[0]  # both of Prefect's records of it dropped
    assert "task failed with ValueError\n" in text  # the other failure: its line, no traceback
    assert text.count("Traceback") == 1 and "not Prefect's: left alone" in text
    logger.addHandler(handler)
    try:
        logger.error("after the block: kept")
    finally:
        logger.removeHandler(handler)
    assert "after the block: kept" in stream.getvalue()


@pytest.mark.slow
def test_a_worklog_database_out_of_reach_is_one_line_and_exit_4(tmp_path, fixtures_dir, cli_env):
    """The worklog's PostgreSQL server is down when the night reaches it: the findings are in the
    queues, and the night says what failed in one line (no traceback, no password), exit 4."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    env = {**cli_env, "B12_WORKLOG_URL": f"postgresql+psycopg://coders:s3cret-pw@127.0.0.1:{port}/b12"}
    done = _run_night(fixtures_dir / "emar_2024-03-01.csv", out, env)
    _assert_one_clear_line(done, "worklog database", str(port))
    assert "s3cret-pw" not in done.stderr + done.stdout
    assert list((out / "queues").rglob("*.parquet"))  # the night's findings were written before it


@pytest.mark.slow
def test_a_worklog_database_refusing_the_update_is_one_line_and_exit_4(tmp_path, fixtures_dir, cli_env):
    """The worklog's database refuses the night's inserts (here a site's trigger; a constraint or a
    permission does the same): one line with the kind of error, the database's code and the first
    line of its message, exit 4, no traceback, and the findings are in the queues."""
    import sqlite3

    from b12pipeline.worklog import open_worklog

    out = tmp_path / "out"
    out.mkdir()
    open_worklog(out).dispose()
    with sqlite3.connect(out / "worklog.sqlite") as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON worklog_finding "
            "BEGIN SELECT RAISE(ABORT, 'refused-by-site-trigger'); END"
        )
    done = _run_night(fixtures_dir / "emar_2024-03-01.csv", out, cli_env)
    _assert_one_clear_line(done, "worklog database refused", "IntegrityError", "SQLITE_CONSTRAINT", "refused-by-site")
    assert list((out / "queues").rglob("*.parquet"))
