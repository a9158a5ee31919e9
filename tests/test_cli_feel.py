"""What a person sees: progress lines on stderr, and output that fits an 80-column terminal.

The night runs through the real CLI in a child process (stderr is a pipe, as under a scheduler)
against the session's Prefect API, so it also exercises `run` with PREFECT_API_URL set.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from b12pipeline import progress
from b12pipeline.cli.feedback import feedback

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fixtures"
CLI = str(Path(sys.executable).parent / "b12pipeline")
STEP = re.compile(r"^\[\s*\d+\.\d+s\] night 2024-03-02: (?P<text>.+)$")


def cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=600)


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def night(prefect_harness, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("feel")
    landing, out = root / "landing", root / "out"
    landing.mkdir()
    for p in FIXTURES.iterdir():
        if p.suffix in (".csv", ".parquet"):
            shutil.copy2(p, landing / p.name)
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), COLUMNS="80", TERM="xterm-256color")
    proc = cli(["nightly", "--landing", str(landing), "--out", str(out), "--night", "2024-03-02"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out, env


@pytest.mark.slow
def test_progress_lines_on_stderr_when_not_a_terminal(night):
    proc, _, _ = night
    steps = [m["text"] for line in proc.stderr.splitlines() if (m := STEP.match(line))]
    assert "\x1b[" not in proc.stderr  # plain lines, no terminal control codes in a log
    assert steps[:2] == ["starting Prefect", "3 new file(s) in the landing folder, 0 already processed"]
    assert "read emar_2024-03-01.csv: 16 rows, 12 B12" in steps
    assert "validated emar_2024-03-01.csv: 10 valid, 2 quarantined" in steps
    valid = sum(int(m[1]) for s in steps if (m := re.fullmatch(r"validated \S+: (\d+) valid, \d+ quarantined", s)))
    assert any(s.startswith(f"history: {valid} rows merged") for s in steps), steps
    assert any(re.fullmatch(r"evaluated \d+ date\(s\): \d+ findings", s) for s in steps), steps
    assert steps[-1] == "done"
    assert "Night 2024-03-02" not in proc.stderr  # results go to stdout


@pytest.mark.slow
def test_a_stale_reference_table_is_warned_about_once(night):
    """The shipped HCPCS table is from 2020: the summary says so once, not a log line as well."""
    proc, _, _ = night
    said = [line for line in proc.stderr.splitlines() if "reference table hcpcs is from" in line]
    assert len(said) == 1 and said[0].startswith("warning reference table hcpcs"), said


@pytest.mark.slow
def test_summary_fits_80_columns_without_cutting_words(night):
    proc, out, _ = night
    assert "…" not in proc.stdout
    lines = proc.stdout.splitlines()
    # Paths are whole on their own line (the terminal wraps them): a copied path works.
    assert f"queues:     {out / 'queues'}" in lines and f"quarantine: {out / 'quarantine'}" in lines
    paths = ("queues:", "quarantine:", "run record:", "report:")
    assert max(len(line) for line in lines if not line.startswith(paths)) <= 80
    for name in ("emar_2024-03-01.csv", "emar_2024-03-02.parquet", "emar_all_rules.csv", "quarantined"):
        assert name in proc.stdout


@pytest.mark.slow
def test_queue_show_at_80_columns_contains_every_finding_in_full(night):
    from b12pipeline.export import select_findings

    _, out, env = night
    for queue in ("coding", "documentation", "medical_necessity"):
        found = select_findings(out / "queues", queue)
        assert found.height > 0
        shown = cli(["queue", "show", queue, "--out", str(out), "--limit", "0"], env)
        assert shown.returncode == 0, shown.stderr
        assert "…" not in shown.stdout
        assert max(len(line) for line in shown.stdout.splitlines()) <= 80
        text = one_line(shown.stdout)
        for r in found.iter_rows(named=True):
            for key in ("message", "expected", "actual", "admin_id"):
                assert one_line(r[key] or "") in text, (queue, key, r[key])


@pytest.mark.slow
def test_queue_list_at_80_columns_shows_whole_rule_ids(night):
    from b12pipeline.export import select_findings

    _, out, env = night
    listed = cli(["queue", "list", "--out", str(out)], env)
    assert listed.returncode == 0, listed.stderr
    assert "…" not in listed.stdout
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    for rule_id in set(select_findings(out / "queues")["rule_id"].to_list()):
        assert re.search(rf"\b{re.escape(rule_id)} x\d+", listed.stdout), rule_id


def test_quiet_prints_no_progress(capsys):
    with feedback("night 2024-03-02", quiet=True):
        progress.step("read x.csv: 3 rows")
    with feedback("night 2024-03-02"):
        progress.step("read y.csv: 4 rows")
    progress.step("after the block: nobody listens")
    err = capsys.readouterr().err
    assert "x.csv" not in err and "after the block" not in err
    assert re.search(r"^\[\s*\d+\.\ds\] night 2024-03-02: read y.csv: 4 rows$", err, re.M)


@pytest.mark.slow
def test_an_unknown_rule_is_said_not_to_exist(night):
    _, out, env = night
    shown = cli(["queue", "show", "coding", "--out", str(out), "--rule", "UNITS-999"], env)
    assert shown.returncode == 2 and "--rule UNITS-999: no such rule" in shown.stderr
    assert "no findings" not in shown.stdout


@pytest.mark.slow  # a child process that waits for the unreachable server to time out
def test_serve_without_a_reachable_prefect_server_says_so_and_exits(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect_home")
    args = ["serve", "--landing", str(landing), "--out", str(tmp_path / "out")]
    unset = cli(args, env)
    assert unset.returncode == 4 and "serve needs a running Prefect server" in unset.stderr
    unreachable = cli(args, dict(env, PREFECT_API_URL="http://127.0.0.1:9/api"))
    assert unreachable.returncode == 4 and "http://127.0.0.1:9/api is not reachable" in unreachable.stderr
    assert "Traceback" not in unset.stderr + unreachable.stderr


def test_a_command_line_flow_run_sends_heartbeats_only_when_the_site_asks(monkeypatch):
    """Without a configured frequency the run sends none (its end would wait up to 1 s for the
    heartbeat thread); a site that set PREFECT_FLOWS_HEARTBEAT_FREQUENCY keeps its value."""
    from prefect.flow_engine import FlowRunEngine
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from b12pipeline.cli.prefect_server import HEARTBEAT_VARIABLES, flow_run_settings

    engine = FlowRunEngine(flow=lambda: None)
    for name in HEARTBEAT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert engine.heartbeat_seconds == 180  # Prefect's default, which the check below depends on
    with flow_run_settings():
        assert engine.heartbeat_seconds is None
    assert engine.heartbeat_seconds == 180
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}), flow_run_settings():
        assert engine.heartbeat_seconds == 60  # a profile's value
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "180")
    with flow_run_settings():
        assert engine.heartbeat_seconds == 180  # set in the environment, even to the default


def test_objects_made_by_the_startup_imports_are_frozen_and_collection_is_back_on():
    """The imports run without the cyclic collector; what they made is frozen, not lost, and the
    collector is on again afterwards (or stays off where the caller had turned it off)."""
    import gc

    from b12pipeline.imports import imports_kept_for_the_run

    frozen = gc.get_freeze_count()
    try:
        with imports_kept_for_the_run():
            assert not gc.isenabled()
            made = [[i] for i in range(1000)]  # container objects the collector tracks
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(made)
        gc.disable()
        with imports_kept_for_the_run():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


def test_the_suite_runner_built_in_the_background_is_the_one_validation_uses(monkeypatch):
    """The command line builds GX's runner in a thread while the night starts; validation asking
    for it meanwhile waits for that build and gets the same runner: GX is set up once."""
    import gc

    from b12pipeline import validate
    from b12pipeline.cli.prefect_server import warm_up_in_background

    built = []
    real_init = validate.SuiteRunner.__init__

    def counted(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(validate.SuiteRunner, "__init__", counted)
    validate._suite_runner.cache_clear()
    try:
        thread = warm_up_in_background()
        runner = validate.suite_runner()
        thread.join(timeout=120)
        assert not thread.is_alive()
        assert built == [runner] and validate.suite_runner() is runner
        assert gc.isenabled()
    finally:
        validate._suite_runner.cache_clear()
        gc.unfreeze()


def _night_with_a_rejected_file(tmp_path: Path, env: dict) -> tuple[subprocess.CompletedProcess, str]:
    rejected = f"unreadable-{tmp_path.name}.csv"  # a name no other test's night uses
    (tmp_path / rejected).write_bytes(b"a,b\n1,2\n")
    args = ["run", "-e", str(FIXTURES / "emar_2024-03-01.csv"), "-e", str(tmp_path / rejected)]
    proc = cli([*args, "--out", str(tmp_path / "out"), "--night", "2024-03-02"], env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    return proc, rejected


@pytest.mark.slow
def test_a_rejected_file_is_said_once_and_reaches_prefect(prefect_harness, tmp_path):
    """The summary names the rejected file; Prefect's log line saying the same stays off the
    terminal but is in Prefect's own log of the run (sent before the command exits)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterLevel
    from prefect.client.schemas.sorting import LogSort
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), COLUMNS="80")
    proc, rejected = _night_with_a_rejected_file(tmp_path, env)
    said = proc.stdout + proc.stderr
    assert said.count(f"{rejected}: missing required column") == 1, said[-3000:]

    async def warnings() -> list[str]:
        async with get_client() as client:
            # The newest first: the session's server holds every test's warnings.
            warned = LogFilter(level=LogFilterLevel(ge_=30))
            logs = await client.read_logs(log_filter=warned, limit=50, sort=LogSort.TIMESTAMP_DESC)
        return [log.message for log in logs]

    assert any(rejected in message and "missing required column" in message for message in asyncio.run(warnings()))


@pytest.mark.slow  # starts Prefect's temporary server
def test_the_temporary_server_outlives_what_prefect_still_has_to_send_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect_home")
    proc, rejected = _night_with_a_rejected_file(tmp_path, env)
    said = proc.stdout + proc.stderr
    assert said.count(f"{rejected}: missing required column") == 1, said[-3000:]
    assert "Error logging to API" not in said and "Traceback" not in said, said[-3000:]
