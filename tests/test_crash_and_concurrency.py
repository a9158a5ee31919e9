"""Crash safety and concurrent runs, with the real CLI in subprocesses against the session's Prefect API.

- A run SIGKILLed (its whole process group) while it writes history and queue partitions leaves no
  partial file a reader can see; a reader polling throughout never reads a torn Parquet file; the
  next run cleans the temp files and completes the night with the same findings as a clean run.
- Two runs on the same --out: the second stops with exit code 3 naming the holder's pid, or waits
  with --wait and then completes; nothing is corrupted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from b12pipeline.files import sha256_file
from b12pipeline.history import read_history
from b12pipeline.paths import OutputLayout
from b12pipeline.pipeline import Rules, apply_staged, make_run_id, stage_file
from b12pipeline.queues import read_queue

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "b12pipeline")
NIGHT = "2024-12-31"
DAYS = 240


@pytest.fixture(scope="module")
def cli_env(prefect_harness) -> dict:
    """Subprocess environment pointing at the session's Prefect API (no ephemeral server per run)."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING"}


@pytest.fixture(scope="module")
def big_extract(tmp_path_factory) -> Path:
    """DAYS service dates x 60 administrations, with coding and documentation findings every day,
    so a run spends seconds writing hundreds of history and queue partitions."""
    base = pl.read_csv(
        Path(__file__).resolve().parent.parent / "data/fixtures/emar_2024-03-01.csv", infer_schema=False, n_rows=1
    )
    n = DAYS * 60
    i = pl.int_range(n, eager=True)
    day = pl.Series([dt.date(2024, 1, 1) + dt.timedelta(days=k) for k in range(DAYS)]).gather(i // 60)
    frame = base.select(pl.all().gather([0] * n)).with_columns(
        pl.format("MAR-{}", i).alias("admin_id"),
        pl.format("MRN{}", i % 997).alias("patient_id"),
        (day.dt.to_string("%Y-%m-%d") + "T09:" + (i % 60).cast(pl.String).str.zfill(2)).alias("admin_time"),
        pl.when(i % 7 == 0).then(pl.lit("2000")).otherwise(pl.lit("1000")).alias("dose_value"),
        pl.when(i % 11 == 0).then(pl.lit(None)).otherwise(pl.lit("AR24117")).alias("lot_number"),
    )
    path = tmp_path_factory.mktemp("big") / "emar_big.csv"
    frame.write_csv(path)
    return path


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _run(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _visible_files(out: Path) -> list[Path]:
    return [
        p for p in out.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    ]


def _assert_readers_see_whole_files(out: Path) -> None:
    for p in _visible_files(out):
        if p.suffix == ".parquet":
            pq.read_metadata(p)  # a torn Parquet file has no footer: this raises
            pl.read_parquet(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
    layout = OutputLayout(out)
    read_queue(layout.queues)
    read_history(layout.history)
    if layout.queues.is_dir():  # what a BI tool does: the queues as one hive dataset
        ds.dataset(layout.queues, format="parquet", partitioning="hive").to_table()


class Reader(threading.Thread):
    """Reads the queues and history in a loop while a run writes them; records any torn read."""

    def __init__(self, out: Path):
        super().__init__(daemon=True)
        self.out, self.stop, self.errors, self.reads = out, threading.Event(), [], 0

    def run(self) -> None:
        layout = OutputLayout(self.out)
        while not self.stop.is_set():
            try:
                read_queue(layout.queues)
                read_history(layout.history)
                self.reads += 1
            except FileNotFoundError:
                pass  # a partition removed between listing and reading: absent, never partial
            except Exception as exc:  # noqa: BLE001 - any other failure is a torn file
                self.errors.append(repr(exc)[:300])
            time.sleep(0.01)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if path.exists():
            return True
        time.sleep(0.02)
    return False


def _findings(out: Path) -> pl.DataFrame:
    return read_queue(OutputLayout(out).queues)


def test_killed_runs_leave_no_partial_files_and_the_rerun_completes_the_night(big_extract, cli_env, tmp_path):
    args = ["run", "-e", str(big_extract), "--night", NIGHT, "--out"]
    reference = tmp_path / "reference"
    clean = _start(args + [str(reference)], cli_env)  # the clean run, beside the killed ones (its own --out)

    out = tmp_path / "crashed"
    rng = random.Random(20240301)
    layout = OutputLayout(out)
    # Kill at a random instant (0-300 ms) after history, then queue, partitions start being written.
    killed_at = []
    for marker in (layout.history, layout.queues):
        reader = Reader(out)
        reader.start()
        proc = _start(args + [str(out)], cli_env)
        if marker is not None:
            reached = _wait_for(marker, proc)
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            reached = True
            time.sleep(rng.uniform(2.0, 12.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        reader.stop.set()
        reader.join(timeout=10)
        killed_at.append((str(marker and marker.name), reached, proc.returncode))
        assert not reader.errors, reader.errors
        _assert_readers_see_whole_files(out)
    print("kills (marker, reached, returncode):", killed_at)
    assert any(rc == -signal.SIGKILL for _, _, rc in killed_at), killed_at
    _, clean_err = clean.communicate(timeout=300)
    assert clean.returncode == 0, clean_err
    expected = _findings(reference)
    assert expected.height > DAYS and {"coding", "documentation"} <= set(expected["queue"])

    # What a death mid-write leaves (whether or not the kills above hit that instant): must be cleaned.
    stale = layout.queues / "coding" / "service_date=2024-01-02" / ".part-0.parquet.deadbeef.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"PAR1 torn")
    (layout.staging / "night-old").mkdir(parents=True, exist_ok=True)
    (layout.staging / "night-old" / ".x.parquet.0123.tmp").write_bytes(b"torn")
    _assert_readers_see_whole_files(out)  # readers ignore the dot-prefixed temp file

    rerun = _run(args + [str(out)], cli_env)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(out.rglob(".*.tmp")), "the rerun must clean stale temp files"
    assert not layout.staging.exists() or not any(layout.staging.iterdir())
    got = _findings(out)
    assert got.equals(expected), "the rerun must complete the night with the findings of a clean run"
    assert (
        read_history(layout.history)
        .sort("admin_id")
        .equals(read_history(OutputLayout(reference).history).sort("admin_id"))
    )


def _expected_findings(extract: Path, tmp: Path) -> pl.DataFrame:
    """The same night through the library, no CLI and no Prefect: what a single clean run leaves."""
    rules = Rules.load()
    night = dt.date.fromisoformat("2024-03-02")
    run_id = make_run_id(night, [sha256_file(extract)], rules.ruleset.version)
    result = stage_file(extract, tmp, run_id, night, rules)
    apply_staged([result.staged], tmp, rules, run_id)
    return _findings(tmp)


def test_second_run_on_the_same_out_stops_or_waits(fixtures_dir, cli_env, tmp_path):
    extract = fixtures_dir / "emar_2024-03-01.csv"
    out = tmp_path / "shared"
    args = ["run", "-e", str(extract), "--night", "2024-03-02", "--out", str(out)]
    first = _start(args, cli_env)
    lock = out / ".lock"
    end = time.monotonic() + 120
    while time.monotonic() < end and not (lock.exists() and str(first.pid) in lock.read_text()):
        time.sleep(0.02)
    assert first.poll() is None, "the first run ended before the second could start: the test proves nothing"
    refused = _start(args, cli_env)
    waiting = _start(args + ["--wait"], cli_env)
    r_out, r_err = refused.communicate(timeout=300)
    f_out, f_err = first.communicate(timeout=300)
    w_out, w_err = waiting.communicate(timeout=300)

    assert first.returncode == 0, f_err
    assert refused.returncode == 3, (r_out, r_err)
    message = " ".join(r_err.split())
    assert "in use by another b12pipeline run" in message and f"pid {first.pid}" in message and "--wait" in message
    assert waiting.returncode == 0, w_err
    assert "waiting for" in w_err
    _assert_readers_see_whole_files(out)
    assert not list(out.rglob(".*.tmp"))
    assert _findings(out).equals(_expected_findings(extract, tmp_path / "expected"))
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1 and json.loads((runs[0] / "manifest.json").read_text())["totals"]["rows_read"] == 16


VOLATILE = ("started_at", "ended_at", "worklog")  # wall-clock times; the worklog counts a re-seen night


def _manifest(out: Path) -> dict:
    """The night's manifest without wall-clock fields, its folder written as <root>."""
    (path,) = (out / "runs").glob("night-*/manifest.json")
    text = path.read_text().replace(str(out.parent), "<root>")
    return {k: v for k, v in json.loads(text).items() if k not in VOLATILE}


def _landing(root: Path, big_extract: Path) -> Path:
    landing = root / "landing"
    landing.mkdir(parents=True)
    (landing / "a_big.csv").write_bytes(big_extract.read_bytes())
    (landing / "b_bad.csv").write_text("not,an,extract\n1,2,3\n")
    return landing


def _first(paths) -> Path | None:
    return next(iter(paths), None)


@pytest.fixture(scope="module")
def landing_reference(big_extract, cli_env, tmp_path_factory) -> tuple[Path, int]:
    """The uninterrupted landing night every kill point is compared with (its output, its exit code)."""
    root = tmp_path_factory.mktemp("ref")
    ref_out = root / "out"
    ref = _run(
        ["nightly", "--landing", str(_landing(root, big_extract)), "--out", str(ref_out), "--night", NIGHT], cli_env
    )
    assert ref.returncode == 1, ref.stderr[-2000:]
    return ref_out, ref.returncode


@pytest.mark.parametrize(
    "window",
    ["rejected", "manifest", "report", "index"],
    ids=["after a rejection", "after the manifest", "after the report", "after the archive index"],
)
def test_a_landing_night_killed_at_any_point_reruns_to_the_same_manifest_and_exit_code(
    big_extract, cli_env, landing_reference, tmp_path, window
):
    ref_out, ref_returncode = landing_reference
    landing, out = _landing(tmp_path / "k", big_extract), tmp_path / "k" / "out"
    proc = _start(["nightly", "--landing", str(landing), "--out", str(out), "--night", NIGHT], cli_env)
    markers = {
        "rejected": lambda: _first((out / "rejected").glob("*.error.txt")),
        "manifest": lambda: _first((out / "runs").glob("night-*/manifest.json")),
        "report": lambda: _first((out / "runs").glob("night-*/report.html")),
        "index": lambda: (out / "archive" / "index.jsonl") if (out / "archive" / "index.jsonl").exists() else None,
    }
    end = time.monotonic() + 240
    while time.monotonic() < end and proc.poll() is None and markers[window]() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert markers[window]() is not None, "the run ended before the window"
    # The kill races the run's next step: a run that recorded its night before the signal landed is
    # judged as one killed after the index, whichever window was aimed at. Recorded means the index
    # holds the night's entries: they go in one write, and the file itself is created just before it
    # (a kill in between leaves it empty, the night unrecorded).
    index = markers["index"]()
    recorded = index is not None and index.stat().st_size > 0

    again = _run(["nightly", "--landing", str(landing), "--out", str(out), "--night", NIGHT], cli_env)
    if recorded:  # the night was recorded: done, as after an uninterrupted run
        assert again.returncode == 0 and "nothing new" in again.stdout, again.stderr[-2000:]
    else:
        assert again.returncode == ref_returncode, again.stderr[-2000:]
    assert _manifest(out) == _manifest(ref_out)
    assert sorted(p.name for p in landing.iterdir()) == ["a_big.csv"]  # the rejected file left landing
    assert sorted(p.name for p in (out / "rejected").iterdir()) == sorted(
        p.name for p in (ref_out / "rejected").iterdir()
    )
    index = [json.loads(line) for line in (out / "archive" / "index.jsonl").read_text().splitlines()]
    assert sorted((e["file"].split("-")[0], e.get("status", "processed")) for e in index) == [
        ("a_big.csv", "processed"),
        ("b_bad", "rejected"),
    ]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while listed
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (an ended process its new parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel ties the server to the run on Linux")
def test_a_run_killed_alone_takes_its_temporary_prefect_server_with_it(tmp_path):
    """SIGKILL of the CLI's pid only (the OOM killer's way), not its process group: the temporary
    server it started must not keep running under pid 1."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect_home"), PREFECT_LOGGING_LEVEL="WARNING")
    extract = Path(__file__).resolve().parent.parent / "data/fixtures/emar_2024-03-01.csv"
    proc = _start(["run", "--extract", str(extract), "--out", str(tmp_path / "out"), "--night", "2024-03-02"], env)
    end, servers = time.monotonic() + 120, []
    while time.monotonic() < end and proc.poll() is None and not servers:
        servers = [c for c in _children(proc.pid) if b"uvicorn" in Path(f"/proc/{c}/cmdline").read_bytes()]
        time.sleep(0.05)
    assert servers, "the run started no temporary server"
    proc.kill()  # this pid only
    proc.wait(timeout=30)
    end = time.monotonic() + 30
    while time.monotonic() < end and any(_running(s) for s in servers):
        time.sleep(0.1)
    left = [s for s in servers if _running(s)]
    for s in left:
        os.kill(s, signal.SIGKILL)
    assert not left, "the temporary Prefect server outlived the killed run"
