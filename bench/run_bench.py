#!/usr/bin/env python3
"""`make bench`: make data with `b12pipeline synth`, measure side by side, write bench/RESULTS.md.

    python bench/run_bench.py [--quick] [--out RESULTS.md] [--workdir DIR] [--date YYYY-MM-DD] [--keep]

Measurements (each in its own subprocess; wall time, CPU time and peak RSS from os.wait4):
  floor     Polars reads the extract CSV and writes it as Parquet (bench/measure.py floor)
  run       `b12pipeline run` end to end, the real CLI, Prefect start-up included
  profile   the same night's library steps in-process, timed one by one (where the time goes)
  rules     the rule stage alone on the facts frame: Polars engine vs durable-rules (subset)
  backfill  one night of a year's rows through `run`, then `b12pipeline backfill` over that year
  preview   `b12pipeline rules preview` of a changed ruleset over that same year of history
  bulk      ingest of a FHIR Bulk Data export folder vs the same administrations as canonical Parquet
  worklog   the coders' worklog lifecycle update on nights with 100k open findings (the 1M run's own)
--quick (or BENCH_QUICK=1) uses small sizes so the harness itself can be tested; its numbers mean
nothing. This script is the boundary that may read the clock: the date in RESULTS.md is --date or
today, and the date of the night processed is fixed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
MEASURE = BENCH / "measure.py"
sys.path.insert(0, str(BENCH))
from measure import STEPS  # noqa: E402  (the profile's step names, in the order the night runs them)

NIGHT = "2025-01-15"  # after every synthetic date of service: the night all rows arrive
BACKFILL_START = dt.date(2024, 1, 1)
PACKAGES = (
    "b12pipeline",
    "polars",
    "pyarrow",
    "prefect",
    "great_expectations",
    "durable_rules",
    "dask",
    "simple_icd_10_cm",
    "psutil",
)


@dataclass(frozen=True)
class Dataset:
    name: str
    rows: int
    b12_share: float
    days: int
    start: str = "2024-01-02"
    label: str = ""


@dataclass(frozen=True)
class Plan:
    """Sizes. The full plan is the one the targets are stated for; quick only exercises the harness."""

    mode: str
    runs: tuple[Dataset, ...]  # `run` + floor + profile; the last one is "the 1M run"
    allmed: Dataset  # all-medication extract: run + floor, peak RSS target
    backfill: Dataset  # a year of nights
    durable_rows: int  # durable-rules subset of the largest facts frame
    prefect_startup: bool  # a tiny run to show the fixed cost
    backfill_chunks: tuple = (None,)  # backfill --chunk-days variants (None = the CLI default)
    small_night_rows: int = 2_000  # a night after the year of history (and the same night on an empty store)
    bulk: Dataset | None = None  # the same administrations as a FHIR Bulk Data export and as Parquet
    worklog_open: int = 100_000  # open findings in the worklog for the lifecycle measurement
    pull_rows: int = 0  # administrations pulled from PostgreSQL (bench/pull_bench.py), 0 = not measured
    review_findings: int = 100_000  # open findings in the review web app's coding queue
    # The fixed-cost processes and the floors last seconds or less, so one sample swings a ratio by
    # a third: each is measured this many times, interleaved, and its median kept.
    repeats: int = 3


FULL = Plan(
    mode="full",
    runs=(
        Dataset("b12_100k", 100_000, 1.0, 120, label="100k B12 administrations"),
        Dataset("b12_1m", 1_000_000, 1.0, 120, label="1M B12 administrations"),
    ),
    allmed=Dataset("allmed_5m", 5_000_000, 0.05, 120, label="5M-row all-medication extract, 5% B12"),
    backfill=Dataset(
        "year_1_1m", 365 * 3_000, 1.0, 365, start=BACKFILL_START.isoformat(), label="365 nights x 3k B12 rows"
    ),
    durable_rows=20_000,
    prefect_startup=True,
    backfill_chunks=(None, 7),  # the default (the look-back, 365 days), and 7-day chunks
    bulk=Dataset("bulk_1m", 1_000_000, 1.0, 120, label="1M B12 administrations"),
    pull_rows=1_000_000,
)
# One small all-medication extract over a few nights plays every part (run, all-medication,
# backfill), so the harness test starts Prefect only twice (run + backfill).
_QUICK_DS = Dataset(
    "quick", 8_000, 0.25, 10, start=BACKFILL_START.isoformat(), label="8k-row extract, 25% B12, 10 nights (quick)"
)
QUICK = Plan(
    mode="quick",
    runs=(_QUICK_DS,),
    allmed=_QUICK_DS,
    backfill=_QUICK_DS,
    durable_rows=300,
    prefect_startup=False,
    bulk=_QUICK_DS,
    worklog_open=2_000,
    pull_rows=3_000,
    small_night_rows=200,
    review_findings=2_000,
    repeats=1,
)
FIXTURES = PROJECT / "data" / "fixtures"
SMALL_NIGHT = ("emar_2024-03-01.csv", "emar_2024-03-02.parquet", "emar_all_rules.csv")  # ~70 rows

TARGETS = {
    "run_vs_floor": "`run` on 1M B12 administrations <= 8 x the floor",
    "run_wall": "`run` on 1M B12 administrations < 60 s wall, Prefect start-up included",
    "rules_rate": "rule stage >= 500,000 administrations/s (Polars engine)",
    "rules_vs_durable": "rule stage >= 30 x the durable-rules engine on the same rules",
    "allmed_rss": "5M-row all-medication extract: peak RSS <= 4 GB",
    "backfill_ratio": "365-night backfill <= 2 x the one-night run over the same rows",
    "preview_ratio": "`rules preview` of a 365-day history <= 2 x the one-night run over the same rows",
    "fixed_temporary": "70-row night <= 2 x `import polars, prefect, great_expectations` (temporary server)",
    "fixed_running": "70-row night <= 1.2 x that import (running server, PREFECT_API_URL)",
    "early_error": "malformed rule file reported <= 1.5 x `b12pipeline --help`",
    "run_vs_floor_running": "`run` on 1M B12 administrations <= 8 x the floor (running server)",
    "night_after_year_time": "small night after a year of history <= 1.2 x the same night on an empty store (time)",
    "night_after_year_rss": "small night after a year of history <= 1.2 x the same night on an empty store (peak RSS)",
    "year_extract_rss": "a year of history loaded as one extract: peak RSS <= 2 GB",
    "worklog_ratio": "worklog lifecycle update of a night with 100k open findings < 10% of that night's `run`",
    "review_page": "review app: queue page and API list < 300 ms (median) with 100k open findings",
}


# --- running one measurement --------------------------------------------------------------------


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float  # max over the process and its reaped children (kernel ru_maxrss)
    tree_rss_mb: float | None  # sampled sum over the live process tree (psutil), if available
    returncode: int
    load_before: float
    aborted: str = ""  # why the harness stopped it (RSS cap), "" when it ran to the end
    detail: dict = field(default_factory=dict)
    log: str = ""


# The machine is shared: a measurement whose process tree grows past this is stopped (and reported
# as such) before the kernel's OOM killer picks a victim, which may be someone else's process.
RSS_CAP_MB = float(os.environ.get("BENCH_RSS_CAP_GB", "12")) * 1024


def _tree_sampler(proc: subprocess.Popen, peak: list[float], stop: threading.Event, aborted: list[str]) -> None:
    try:
        import psutil
    except ImportError:
        peak[0] = -1.0
        return
    try:
        root = psutil.Process(proc.pid)
    except psutil.Error:
        return
    while not stop.is_set():
        try:
            total = 0
            for p in [root] + root.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            break
        peak[0] = max(peak[0], total / 2**20)
        if peak[0] > RSS_CAP_MB:
            aborted.append(f"stopped by the harness at {peak[0] / 1024:.1f} GB RSS (cap {RSS_CAP_MB / 1024:.0f} GB)")
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the CLI and Prefect's server
            except ProcessLookupError:
                pass
            break
        stop.wait(0.1)


def measure(cmd: list[str], env: dict, log: Path, json_out: Path | None = None) -> Measured:
    """Run `cmd` to completion in its own process; wall, CPU and peak RSS of that process only."""
    load = os.getloadavg()[0]
    if json_out is not None and json_out.exists():
        json_out.unlink()
    with open(log, "w") as fh:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=PROJECT, start_new_session=True)
        peak, stop, aborted = [0.0], threading.Event(), []
        sampler = threading.Thread(target=_tree_sampler, args=(proc, peak, stop, aborted), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        stop.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    detail = json.loads(json_out.read_text()) if json_out is not None and json_out.exists() else {}
    return Measured(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        tree_rss_mb=None if peak[0] < 0 else peak[0],
        returncode=proc.returncode,
        load_before=load,
        aborted=aborted[0] if aborted else "",
        detail=detail,
        log=log.read_text()[-4000:],
    )


class Bench:
    def __init__(self, plan: Plan, workdir: Path, echo=print):
        self.plan, self.work, self.echo = plan, workdir, echo
        self._bench_rules: Path | None = None
        self.data, self.logs = workdir / "data", workdir / "logs"
        for d in (self.data, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.cli = str(Path(sys.executable).parent / "b12pipeline")
        self.env = dict(
            os.environ,
            DO_NOT_TRACK="1",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            GX_ANALYTICS_ENABLED="False",
            PREFECT_LOGGING_LEVEL="WARNING",
            PREFECT_HOME=str(workdir / "prefect_home"),
            COLUMNS="160",
        )
        self.results: dict = {
            "floor": {},
            "run": {},
            "profile": {},
            "rules": {},
            "backfill": {},
            "preview": {},
            "bulk": {},
            "synth": {},
            "worklog": {},
            "pull": None,
            "prefect_startup": None,
            "fixed": {},
            "run_running": {},
            "small_night": {},
        }
        self.api_env: dict | None = None  # self.env plus PREFECT_API_URL of the running server
        self.side_by_side = False  # two measurements may run at once: progress is printed in whole lines

    # --- a running Prefect server, for the PREFECT_API_URL measurements ---------------------------

    def start_server(self) -> subprocess.Popen:
        """Prefect's API server as a site runs it (UI off), its own database in the workdir."""
        import importlib.util
        import socket
        import urllib.request

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        app_dir = Path(importlib.util.find_spec("prefect").origin).parent.parent
        env = dict(self.env, PREFECT_UI_ENABLED="0", PREFECT_HOME=str(self.work / "prefect_server_home"))
        log = open(self.logs / "prefect-server.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory"]
            + ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port)]
            + ["--log-level", "error", "--lifespan", "on"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}/api"
        self.echo("  starting a Prefect server for the PREFECT_API_URL measurements ...", end="", flush=True)
        deadline = time.perf_counter() + 300
        while time.perf_counter() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        self.api_env = dict(self.env, PREFECT_API_URL=url)
                        self.echo(" up")
                        return proc
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                break
        os.killpg(proc.pid, signal.SIGTERM)
        raise RuntimeError(f"the Prefect server did not start; log {self.logs / 'prefect-server.log'}")

    def fixed_cost(self, prefect_home: Path | None = None) -> None:
        """Side by side: the import floor, a ~70-row night (temporary server, then a running one),
        `--help`, and a malformed rule file (an error that needs no data). `prefect_home`: the
        temporary servers' own Prefect home (their database), when other runs go on beside these."""
        base = self.env if prefect_home is None else dict(self.env, PREFECT_HOME=str(prefect_home))
        extracts = [a for name in SMALL_NIGHT for a in ("--extract", str(FIXTURES / name))]
        night = ["--night", "2024-03-02"]
        f = self.results["fixed"]
        broken = self.work / "rules-broken"
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(PROJECT / "rules", broken)
        rule = sorted((broken / "coding").glob("*.yaml"))[0]
        rule.write_text(re.sub(r"(?m)^severity: .*$", "severity: error: high", rule.read_text(), count=1))
        samples: dict[str, list[dict]] = {}
        for i in range(self.plan.repeats):
            tag = f"-{i + 1}" if self.plan.repeats > 1 else ""
            samples.setdefault("import", []).append(
                _wall(
                    self._run(
                        f"import-floor{tag}",
                        [sys.executable, "-c", "import polars, prefect, great_expectations"],
                        env=base,
                    )
                )
            )
            # The temporary server's first run also creates its database: measured once.
            nights = (("temporary_first", None),) if i == 0 else ()
            for key, env in (*nights, ("temporary", base), ("running", self.api_env)):
                out = self.work / f"out-fixed-{key}"
                shutil.rmtree(out, ignore_errors=True)
                m = self._run(f"fixed-{key}{tag}", [self.cli, "run", *extracts, "--out", str(out), *night], env=env)
                samples.setdefault(key, []).append(_wall(m))
            samples.setdefault("help", []).append(_wall(self._run(f"help{tag}", [self.cli, "--help"], env=base)))
            err = self._run(
                f"early-error{tag}",
                [self.cli, "run", *extracts, "--rules", str(broken), "--out", str(self.work / "out-err"), *night],
                may_fail=True,
                env=base,
            )
            if err.returncode != 2:
                raise RuntimeError(f"a malformed rule file should exit 2, got {err.returncode}:\n{err.log}")
            samples.setdefault("early_error", []).append(_wall(err))
        for key, rows in samples.items():
            f[key] = _median(rows)

    def run_running(self, ds: Dataset, extract: Path) -> None:
        """`run` with a running server, each sample right after a floor sample: the machine's speed
        drifts by a third within minutes, so a ratio of two processes far apart in time measured the
        drift; the target is the median of the pairs' ratios."""
        out = self.work / f"out-running-{ds.name}"
        pairs, runs = [], []
        for i in range(self.plan.repeats):
            shutil.rmtree(out, ignore_errors=True)
            floor = self._floor_sample(ds, extract, f"floor-paired-{ds.name}-{i + 1}")
            cmd = [self.cli, "run", "--extract", str(extract), "--out", str(out), "--night", NIGHT]
            run = _row(ds, self._run(f"run-running-{ds.name}-{i + 1}", cmd, env=self.api_env))
            pairs.append({"floor_s": floor["wall_s"], "run_s": run["wall_s"], "ratio": run["wall_s"] / floor["wall_s"]})
            runs.append(run)
        shutil.rmtree(out, ignore_errors=True)
        self.results["run_running"][ds.name] = _median(runs) | {
            "pairs": pairs,
            "vs_floor": statistics.median(p["ratio"] for p in pairs),
        }

    def small_night(self, year: Dataset) -> None:
        """A small night dated the day after the year, on an empty store and on the year's store
        (out-<year>, after its backfills). Its admin ids are made its own, so it adds rows to the
        year (as a real night does) instead of superseding some; its patients are the year's."""
        import polars as pl

        first = dt.date.fromisoformat(year.start) + dt.timedelta(days=year.days)
        ds = Dataset("small_night", self.plan.small_night_rows, 1.0, 1, start=first.isoformat(), label="")
        raw = self.data / "small_night_raw.csv"
        cmd = [self.cli, "synth", "--rows", str(ds.rows), "--seed", "11", "--format", "csv", "--out", str(raw)]
        self._run("synth-small-night", cmd + ["--b12-share", "1", "--days", "1", "--start", ds.start])
        extract = self.data / "small_night.csv"
        frame = pl.read_csv(raw, infer_schema=False)
        frame.with_columns(pl.concat_str(pl.lit("N"), pl.col("admin_id")).alias("admin_id")).write_csv(extract)
        empty = self.work / "out-small-empty"
        # A few seconds each, so one slow moment of the machine moved the ratio by 0.2: the two
        # stores take turns, SMALL_NIGHT_SAMPLES times, and each side keeps its median. The empty
        # store is new each time; on the year's store the later samples re-run the same night
        # (its 2,000 rows supersede themselves: the same dates and patients to evaluate).
        rows: dict[str, list[dict]] = {"empty": [], "year": []}
        for i in range(SMALL_NIGHT_SAMPLES):
            shutil.rmtree(empty, ignore_errors=True)
            for key, out in (("empty", empty), ("year", self.work / f"out-{year.name}")):
                cmd = [self.cli, "run", "--extract", str(extract), "--out", str(out), "--night", NIGHT]
                rows[key].append(_row(ds, self._run(f"small-night-{key}-{i + 1}", cmd, env=self.api_env)))
        for key, samples in rows.items():
            self.results["small_night"][key] = _median(samples) | {"label": f"{ds.rows:,}-row night, {key} store"}

    # Every step prints a line, so a long `make bench` shows where it is.
    def _run(
        self, key: str, cmd: list[str], json_out: Path | None = None, may_fail: bool = False, env: dict | None = None
    ) -> Measured:
        if not self.side_by_side:
            self.echo(f"  {key} ...", end="", flush=True)
        m = measure(cmd, env or self.env, self.logs / f"{key}.log", json_out)
        self.echo(
            (f"  {key} ..." if self.side_by_side else "")
            + f" {m.wall_s:.1f} s, peak RSS {m.peak_rss_mb:,.0f} MB"
            + ("" if m.returncode == 0 else f"  (exit {m.returncode})")
            + (f"  {m.aborted}" if m.aborted else "")
        )
        if m.returncode != 0 and not may_fail:
            raise RuntimeError(
                f"{' '.join(cmd)} failed with exit {m.returncode}; log {self.logs / f'{key}.log'}:\n{m.log}"
            )
        return m

    def synth(self, ds: Dataset, fmt: str = "csv") -> Path:
        path = self.data / (f"{ds.name}.{fmt}" if fmt != "fhir-bulk" else f"{ds.name}-export")
        if not path.exists():
            m = self._run(
                f"synth-{ds.name}-{fmt}",
                [
                    self.cli,
                    "synth",
                    "--rows",
                    str(ds.rows),
                    "--seed",
                    "7",
                    "--format",
                    fmt,
                    "--out",
                    str(path),
                    "--b12-share",
                    str(ds.b12_share),
                    "--days",
                    str(ds.days),
                    "--start",
                    ds.start,
                ],
            )
            key = ds.name if fmt == "csv" else f"{ds.name} ({fmt})"
            self.results["synth"][key] = {"rows": ds.rows, "wall_s": m.wall_s}
        return path

    def floor(self, ds: Dataset, extract: Path) -> None:
        if ds.name in self.results["floor"]:
            return
        rows = [
            self._floor_sample(ds, extract, f"floor-{ds.name}" + (f"-{i + 1}" if self.plan.repeats > 1 else ""))
            for i in range(self.plan.repeats)
        ]
        self.results["floor"][ds.name] = _median(rows)

    def _floor_sample(self, ds: Dataset, extract: Path, key: str) -> dict:
        out, parquet = self.work / f"floor-{ds.name}.json", self.work / f"floor-{ds.name}.parquet"
        cmd = [sys.executable, str(MEASURE), "floor", "--extract", str(extract), "--out", str(parquet)]
        m = self._run(key, [*cmd, "--json", str(out)], out)
        parquet.unlink(missing_ok=True)
        return _row(ds, m)

    def run(self, ds: Dataset, extract: Path) -> dict:
        """Each dataset is run once, into <workdir>/out-<name> (the backfill reuses that output)."""
        if ds.name in self.results["run"]:
            return self.results["run"][ds.name]
        out = self.work / f"out-{ds.name}"
        shutil.rmtree(out, ignore_errors=True)
        m = self._run(
            f"run-{ds.name}", [self.cli, "run", "--extract", str(extract), "--out", str(out), "--night", NIGHT]
        )
        manifest = _manifest(out)
        row = _row(ds, m)
        totals = manifest.get("totals", {})
        row.update(
            {
                "rows_read": totals.get("rows_read"),
                "in_scope": totals.get("in_scope"),
                "quarantined": totals.get("quarantined"),
                "findings": sum(manifest.get("findings", {}).get("per_queue", {}).values()),
                "dates": len(manifest.get("dates_evaluated") or []),
            }
        )
        self.results["run"][ds.name] = row
        return row

    @property
    def bench_rules(self) -> Path:
        """The rules folder of the profile and rule-stage measurements: the project's rules with
        payer overrides and CMS tables that apply to the synthetic rows (bench/bench_rules.py)."""
        if self._bench_rules is None:
            from bench_rules import build_bench_rules

            self._bench_rules = build_bench_rules(self.work)
        return self._bench_rules

    def profile(self, ds: Dataset, extract: Path) -> Path:
        facts = self.work / f"facts-{ds.name}.parquet"
        out = self.work / f"profile-{ds.name}.json"
        m = self._run(
            f"profile-{ds.name}",
            [
                sys.executable,
                str(MEASURE),
                "profile",
                "--extract",
                str(extract),
                "--work",
                str(self.work / f"profile-{ds.name}"),
                "--facts",
                str(facts),
                "--json",
                str(out),
                "--rules",
                str(self.bench_rules),
            ],
            out,
        )
        shutil.rmtree(self.work / f"profile-{ds.name}", ignore_errors=True)
        self.results["profile"][ds.name] = _row(ds, m)
        return facts

    def rules(self, ds: Dataset, facts: Path, engine: str, limit: int = 0) -> None:
        key = f"{engine}-{ds.name}" + (f"-{limit}" if limit else "")
        out = self.work / f"rules-{key}.json"
        cmd = [sys.executable, str(MEASURE), "rules", "--facts", str(facts), "--engine", engine, "--json", str(out)]
        cmd += ["--rules", str(self.bench_rules)]  # payer overrides and CMS tables that apply (bench_rules.py)
        if limit:
            cmd += ["--limit", str(limit)]
        m = self._run(f"rules-{key}", cmd, out)
        row = _row(ds, m)
        row["engine"] = engine
        self.results["rules"][key] = row

    def backfill(self, ds: Dataset, extract: Path, chunk_days: tuple[int | None, ...]) -> None:
        """One night carrying every row, then the backfill over the same dates: as the user runs it
        (default chunking) and with each of `chunk_days` (a run that fails or is stopped is reported)."""
        out = self.work / f"out-{ds.name}"
        night = self.run(ds, extract)
        first = dt.date.fromisoformat(ds.start)
        last = first + dt.timedelta(days=ds.days - 1)
        for days in chunk_days:
            key = f"{ds.name}" + (f"-chunk{days}" if days else "")
            cmd = [self.cli, "backfill", "--from", first.isoformat(), "--to", last.isoformat(), "--out", str(out)]
            if days:
                cmd += ["--chunk-days", str(days)]
            m = self._run(f"backfill-{key}", cmd, may_fail=True)
            row = _row(ds, m)
            row.update(
                {
                    "nights": ds.days,
                    "chunk_days": days or "default",
                    "one_night_wall_s": night["wall_s"],
                    "ratio": m.wall_s / night["wall_s"],
                    "ok": m.returncode == 0,
                    "outcome": "completed"
                    if m.returncode == 0
                    else (
                        m.aborted
                        or f"failed (exit {m.returncode}"
                        + (": killed, out of memory?" if m.returncode == -9 else "")
                        + ")"
                    ),
                }
            )
            self.results["backfill"][key] = row

    def preview(self, ds: Dataset) -> None:
        """`rules preview` of a changed ruleset (DOC-001 raised to an error, FREQ-001 extended to
        commercial payers, both with new versions) over the year the backfill re-evaluated."""
        out = self.work / f"out-{ds.name}"
        candidate = self.work / "rules-candidate"
        shutil.rmtree(candidate, ignore_errors=True)
        shutil.copytree(PROJECT / "rules", candidate)
        for rel, edits in (
            ("documentation/DOC-001.yaml", [("severity: warning", "severity: error")]),
            ("medical_necessity/FREQ-001.yaml", [("in: {config: frequency_payers}", "in: [medicare, commercial]")]),
        ):
            path = candidate / rel
            text = path.read_text()
            for old, new in edits:
                text = text.replace(old, new, 1)
            version = int(text.split('version: "', 1)[1].split('"', 1)[0])
            path.write_text(text.replace(f'version: "{version}"', f'version: "{version + 1}"', 1))
        first = dt.date.fromisoformat(ds.start)
        last = first + dt.timedelta(days=ds.days - 1)
        cmd = [self.cli, "rules", "preview", "--rules", str(candidate), "--out", str(out)]
        cmd += ["--from", first.isoformat(), "--to", last.isoformat()]
        m = self._run(f"preview-{ds.name}", cmd)
        night = self.results["run"][ds.name]
        row = _row(ds, m)
        row.update({"nights": ds.days, "one_night_wall_s": night["wall_s"], "ratio": m.wall_s / night["wall_s"]})
        self.results["preview"][ds.name] = row

    def bulk(self, ds: Dataset) -> None:
        """Ingest (read_extract with the B12 scope, as a night calls it) of the same administrations
        written by `synth` (same seed) as canonical Parquet and as a FHIR Bulk Data export folder."""
        rows = {}
        for fmt in ("parquet", "fhir-bulk"):
            extract = self.synth(ds, fmt)
            out = self.work / f"ingest-{ds.name}-{fmt}.json"
            m = self._run(
                f"ingest-{ds.name}-{fmt}",
                [sys.executable, str(MEASURE), "ingest", "--extract", str(extract), "--json", str(out)],
                out,
            )
            rows[fmt] = _row(ds, m)
        bulk, parquet = rows["fhir-bulk"], rows["parquet"]
        self.results["bulk"][ds.name] = {
            "label": ds.label,
            "rows": ds.rows,
            "parquet": parquet,
            "bulk": bulk,
            "export_mb": sum(p.stat().st_size for p in self.synth(ds, "fhir-bulk").iterdir()) / 2**20,
            "ratio_wall": bulk["wall_s"] / parquet["wall_s"],
            "ratio_work": bulk["detail"]["work_s"] / parquet["detail"]["work_s"],
            "ratio_cpu": bulk["cpu_s"] / parquet["cpu_s"],  # steadier than wall on a shared machine
            "same_rows": bulk["detail"]["b12_rows"] == parquet["detail"]["b12_rows"]
            and bulk["detail"]["rows_read"] == parquet["detail"]["rows_read"],
        }

    def worklog(self, ds: Dataset) -> None:
        """The lifecycle update on the worklog of `ds`'s run output, with plan.worklog_open findings."""
        out = self.work / f"worklog-{ds.name}.json"
        m = self._run(
            f"worklog-{ds.name}",
            [
                sys.executable,
                str(MEASURE),
                "worklog",
                "--out",
                str(self.work / f"out-{ds.name}"),
                "--open",
                str(self.plan.worklog_open),
                "--work",
                str(self.work / f"worklog-{ds.name}"),
                "--json",
                str(out),
            ],
            out,
        )
        shutil.rmtree(self.work / f"worklog-{ds.name}", ignore_errors=True)
        row = _row(ds, m)
        run_wall = self.results["run"][ds.name]["wall_s"]
        row["run_wall_s"] = run_wall
        row["ratios"] = {k: v / run_wall for k, v in m.detail["times_s"].items()}
        self.results["worklog"][ds.name] = row

    def prefect_startup(self) -> None:
        ds = Dataset("tiny_50", 50, 1.0, 5, label="50 B12 rows: fixed cost (Prefect, imports, GX, ICD table)")
        row = self.run(ds, self.synth(ds))
        self.results["prefect_startup"] = row

    def all(self) -> dict:
        server = self.start_server()
        try:
            return self._all()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait()

    def _all(self) -> dict:
        if self.plan.mode != "quick":
            self.echo("fixed cost and data-free errors")
            self.fixed_cost()
            self._data_measurements()
            self._own_servers()
            return self.results
        # Quick numbers mean nothing and the harness test waits for all of them: the fixed costs and
        # the measurements with their own servers run beside the rest, the temporary Prefect servers
        # in their own Prefect home (own database).
        self.side_by_side = True
        failed: list[BaseException] = []

        def fixed_costs() -> None:
            try:
                self.fixed_cost(prefect_home=self.work / "prefect_home_fixed")
                self._own_servers()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in the main thread
                failed.append(exc)

        lane = threading.Thread(target=fixed_costs, name="fixed-costs")
        lane.start()
        try:
            self._data_measurements()
        finally:
            lane.join()
        if failed:
            raise failed[0]
        return self.results

    def _data_measurements(self) -> dict:
        p = self.plan
        if p.prefect_startup:
            self.echo("fixed cost")
            self.prefect_startup()
        largest_facts, largest = None, None
        for ds in p.runs:
            self.echo(ds.label)
            extract = self.synth(ds)
            self.floor(ds, extract)
            self.run(ds, extract)
            if ds == p.runs[-1]:
                self.run_running(ds, extract)
            largest_facts, largest = self.profile(ds, extract), ds
            self.rules(ds, largest_facts, "polars")
        self.echo(f"worklog: nights with {p.worklog_open:,} open findings ({largest.label} run's findings)")
        self.worklog(largest)
        self.echo(p.allmed.label)
        extract = self.synth(p.allmed)
        self.floor(p.allmed, extract)
        self.run(p.allmed, extract)
        if p.allmed.name not in self.results["profile"]:
            self.profile(p.allmed, extract)  # where the memory goes
        self.echo(f"durable-rules on the first {p.durable_rows:,} rows of the {largest.label} facts")
        self.rules(largest, largest_facts, "polars", p.durable_rows)
        if _durable_available():
            self.rules(largest, largest_facts, "durable", p.durable_rows)
        self.echo(p.backfill.label)
        extract = self.synth(p.backfill)
        self.floor(p.backfill, extract)
        self.backfill(p.backfill, extract, p.backfill_chunks)
        self.preview(p.backfill)
        self.echo("a small night after the year of history, and on an empty store")
        self.small_night(p.backfill)
        if p.bulk is not None:
            self.echo(f"{p.bulk.label}: FHIR Bulk Data export vs canonical Parquet (ingest)")
            self.bulk(p.bulk)
        return self.results

    def _own_servers(self) -> None:
        """The measurements that start their own server (PostgreSQL, the review app)."""
        p = self.plan
        if p.pull_rows:
            self.echo(f"pull {p.pull_rows:,} administrations from PostgreSQL vs COPY TO on the same server")
            self.pull(p.pull_rows)
        self.echo(f"review web app, {p.review_findings:,} open findings")
        self.review(p.review_findings)

    def pull(self, rows: int) -> None:
        """bench/pull_bench.py in its own process (it starts its own PostgreSQL server)."""
        done = subprocess.run(
            [sys.executable, str(BENCH / "pull_bench.py"), str(rows)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        (self.logs / "pull.log").write_text(done.stdout + done.stderr)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        self.results["pull"] = json.loads(lines[-1]) if done.returncode == 0 and lines else {"failed": done.returncode}

    def review(self, findings: int) -> None:
        """The queue page and the API list over HTTP from the real server (bench/review_bench.py)."""
        report = self.logs / "review.json"
        cmd = [sys.executable, str(BENCH / "review_bench.py"), "--findings", str(findings)]
        self._run("review", [*cmd, "--workdir", str(self.work / "review"), "--json", str(report)])
        self.results["review"] = json.loads(report.read_text())


def _row(ds: Dataset, m: Measured | None) -> dict:
    if m is None:
        return {"dataset": ds.name, "label": ds.label, "rows": ds.rows}
    return {
        "dataset": ds.name,
        "label": ds.label,
        "rows": ds.rows,
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
        "peak_rss_mb": m.peak_rss_mb,
        "tree_rss_mb": m.tree_rss_mb,
        "load_before": m.load_before,
        "detail": m.detail,
    }


SMALL_NIGHT_SAMPLES = 3


def _median(rows: list[dict]) -> dict:
    """The sample with the median wall time (its CPU and memory with it), and how many there were."""
    return sorted(rows, key=lambda r: r["wall_s"])[len(rows) // 2] | {"samples": len(rows)}


def _wall(m: Measured) -> dict:
    return {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "peak_rss_mb": m.peak_rss_mb, "load_before": m.load_before}


def _rate(rules_row: dict) -> float:
    """Rows/s of a rule-stage measurement's first call: compiling the rules included, as in a night."""
    return rules_row["detail"]["rows"] / rules_row["detail"]["times_s"][0]


def _manifest(out: Path) -> dict:
    found = sorted((out / "runs").glob("*/manifest.json"))
    return json.loads(found[-1].read_text()) if found else {}


def _durable_available() -> bool:
    try:
        from b12pipeline.engine.durable import available
    except ImportError:
        return False
    return available()


# --- targets ------------------------------------------------------------------------------------


def evaluate_targets(plan: Plan, r: dict) -> dict:
    """Each target: measured value, limit, met, and the gap (how far off, as a factor)."""
    big = plan.runs[-1].name
    run, floor = r["run"].get(big), r["floor"].get(big)
    targets = {}

    def add(key: str, measured: float | None, limit: float, unit: str, higher_is_better: bool = False) -> None:
        if measured is None:
            targets[key] = {
                "target": TARGETS[key],
                "measured": None,
                "limit": limit,
                "unit": unit,
                "met": None,
                "gap": "not measured",
            }
            return
        met = measured >= limit if higher_is_better else measured <= limit
        factor = (limit / measured if measured else float("inf")) if higher_is_better else measured / limit
        gap = "met" if met else f"{factor:.1f}x off ({_fmt(measured)} {unit} vs {_fmt(limit)} {unit})"
        targets[key] = {
            "target": TARGETS[key],
            "measured": measured,
            "limit": limit,
            "unit": unit,
            "met": met,
            "gap": gap,
        }

    add("run_vs_floor", run["wall_s"] / floor["wall_s"] if run and floor else None, 8, "x floor")
    add("run_wall", run["wall_s"] if run else None, 60, "s")
    polars = r["rules"].get(f"polars-{big}")
    rate = _rate(polars) if polars else None
    add("rules_rate", rate, 500_000, "rows/s", higher_is_better=True)
    sub_p = r["rules"].get(f"polars-{big}-{plan.durable_rows}")
    sub_d = r["rules"].get(f"durable-{big}-{plan.durable_rows}")
    if sub_d:
        # Durable runs on a subset (it is ~100x slower); its rate is flat in the row count (one fact
        # at a time). The Polars side is its rate on the full facts frame: on a 20k-row subset Polars
        # mostly measures its fixed per-call cost. The same-subset ratio is reported beside it.
        d_rate = _rate(sub_d)
        add("rules_vs_durable", (rate or 0) / d_rate, 30, "x durable", higher_is_better=True)
        targets["rules_vs_durable"]["same_subset_ratio"] = _rate(sub_p) / d_rate if sub_p else None
    else:
        add("rules_vs_durable", None, 30, "x durable", higher_is_better=True)
    allmed = r["run"].get(plan.allmed.name)
    add("allmed_rss", allmed["peak_rss_mb"] / 1024 if allmed else None, 4, "GB")
    bf = r["backfill"].get(plan.backfill.name)  # as the user runs it: default chunking
    add("backfill_ratio", bf["ratio"] if bf and bf.get("ok", True) else None, 2, "x one night")
    fx = r.get("fixed", {})

    def ratio(a: dict | None, b: dict | None, key: str = "wall_s") -> float | None:
        return a[key] / b[key] if a and b and b.get(key) else None

    add("fixed_temporary", ratio(fx.get("temporary"), fx.get("import")), 2, "x import")
    add("fixed_running", ratio(fx.get("running"), fx.get("import")), 1.2, "x import")
    add("early_error", ratio(fx.get("early_error"), fx.get("help")), 1.5, "x --help")
    running = r.get("run_running", {}).get(big)
    add("run_vs_floor_running", running["vs_floor"] if running else None, 8, "x floor")
    sn = r.get("small_night", {})
    add("night_after_year_time", ratio(sn.get("year"), sn.get("empty")), 1.2, "x empty store")
    add("night_after_year_rss", ratio(sn.get("year"), sn.get("empty"), "peak_rss_mb"), 1.2, "x empty store")
    year = r["run"].get(plan.backfill.name)
    add("year_extract_rss", year["peak_rss_mb"] / 1024 if year else None, 2, "GB")
    review = r.get("review")
    slowest = max(review["big"]["queue_page"]["median_ms"], review["big"]["api_list"]["median_ms"]) if review else None
    add("review_page", slowest, 300, "ms")
    if bf and not bf.get("ok", True):
        targets["backfill_ratio"].update(
            measured=bf["ratio"],
            met=False,
            gap=f"did not finish: {bf['outcome']} after {bf['wall_s']:.0f} s (> {bf['ratio']:.1f}x the one-night run)",
        )
    pv = r.get("preview", {}).get(plan.backfill.name)
    add("preview_ratio", pv["ratio"] if pv else None, 2, "x one night")
    wl = r.get("worklog", {}).get(big)
    # The typical night (1% corrected, 1% new); the one-off nights are in the worklog table.
    add("worklog_ratio", wl["ratios"]["steady"] * 100 if wl else None, 10, "% of the run")
    return targets


# --- RESULTS.md -----------------------------------------------------------------------------------


def machine_facts(date: str) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = int(line.split()[1]) / 2**20
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    return {
        "date": date,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "commit": commit,
        "loadavg_at_start": os.getloadavg(),
    }


def _by_size(section: dict) -> dict:
    """Rows of a results section, smallest data set first (JSON key order is not kept)."""
    return dict(sorted(section.items(), key=lambda kv: (kv[1].get("rows", 0), kv[0])))


def _ordered_steps(profiles: dict) -> list[str]:
    """Profile steps in the order the night runs them (measure.STEPS), any others after."""
    seen = list(dict.fromkeys(s for v in profiles.values() for s in v["detail"].get("steps", {})))
    return [s for s in STEPS if s in seen] + [s for s in seen if s not in STEPS]


def _fmt(x, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _table(headers: list[str], rows: list[list], numeric: bool = True) -> list[str]:
    align = ["---"] + ["---:" if numeric else "---"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return lines


def render(plan: Plan, facts: dict, r: dict, targets: dict, elapsed: float) -> str:
    big = plan.runs[-1]
    L = [f"# b12pipeline benchmark ({plan.mode})", ""]
    if plan.mode == "quick":
        L += ["**Quick mode: tiny sizes that exercise the harness; the numbers mean nothing.**", ""]
    L += [
        "Generated by `make bench` (`bench/run_bench.py`); every measurement ran in its own subprocess.",
        "Wall = elapsed time of that process; CPU = user + system time; peak RSS = kernel `ru_maxrss` of",
        "the process (largest of it and its reaped children); tree RSS = sampled sum over the live process",
        "tree (the `run` CLI plus Prefect's temporary API server). Load = 1-min load average before it started:",
        "the machine is shared, so a load above the core count inflates wall time (CPU time is not).",
        "",
        "## Machine",
        "",
    ]
    pk = ", ".join(f"{k} {facts['packages'][k]}" for k in [p for p in PACKAGES if p in facts["packages"]])
    L += _table(
        ["fact", "value"],
        [
            ["date", facts["date"]],
            ["CPU", facts["cpu"]],
            ["cores", str(facts["cores"])],
            ["RAM", f"{facts['ram_gb']:.1f} GB" if facts["ram_gb"] else "unknown"],
            ["OS", facts["os"]],
            ["Python", facts["python"]],
            ["packages", pk],
            ["commit", facts["commit"]],
            ["load average at start", " / ".join(f"{x:.2f}" for x in facts["loadavg_at_start"])],
            ["load average at end", " / ".join(f"{x:.2f}" for x in facts.get("loadavg_at_end", ()))],
            ["harness run time", f"{elapsed:.0f} s"],
        ],
        numeric=False,
    )
    L += ["", "## Targets", ""]
    L += _table(
        ["target", "measured", "met", "gap"],
        [
            [
                t["target"],
                "-"
                if t["measured"] is None
                else f"{'> ' if t['gap'].startswith('did not finish') else ''}{_fmt(t['measured'])} {t['unit']}",
                "-" if t["met"] is None else ("met" if t["met"] else "**not met**"),
                t["gap"],
            ]
            for t in targets.values()
        ],
        numeric=False,
    )
    sub = targets.get("rules_vs_durable", {}).get("same_subset_ratio")
    if sub is not None:
        L += [
            "",
            f"Rule-stage ratio on the identical {plan.durable_rows:,}-row subset (both engines, same rows): "
            f"{sub:.0f}x. The target row uses the Polars rate on the full {big.label} facts (on a "
            f"small subset Polars mostly measures its fixed per-call cost; durable's rate is flat).",
        ]

    fx = r.get("fixed", {})
    if fx:
        L += [
            "",
            "## Fixed cost and data-free errors (side by side, one after the other)",
            "",
            'The import floor is `python -c "import polars, prefect, great_expectations"`; the night is the three',
            "bundled fixtures (~70 rows). The temporary server's first run also creates its database. Each row",
            f"but that first run is the median of {plan.repeats} measurements, taken in turn (import, nights,",
            "--help, error; then again), so a ratio compares processes measured under the same load.",
            "",
        ]
        names = {
            "import": "import polars, prefect, great_expectations",
            "temporary_first": "70-row night, temporary server (first run: creates its database)",
            "temporary": "70-row night, temporary server",
            "running": "70-row night, running server (PREFECT_API_URL)",
            "help": "`b12pipeline --help`",
            "early_error": "malformed rule file (exit 2, before Prefect/GX)",
        }
        base = {k: fx["import"]["wall_s"] for k in ("temporary_first", "temporary", "running", "import")}
        base |= {"help": fx.get("help", {}).get("wall_s"), "early_error": fx.get("help", {}).get("wall_s")}
        L += _table(
            ["measurement", "wall s", "ratio", "ratio to", "CPU s", "peak RSS MB", "load"],
            [
                [
                    names[k],
                    v["wall_s"],
                    v["wall_s"] / base[k] if base.get(k) else None,
                    "--help" if k in ("help", "early_error") else "import",
                    v["cpu_s"],
                    v["peak_rss_mb"],
                    v["load_before"],
                ]
                for k, v in fx.items()
            ],
        )
    sn = r.get("small_night", {})
    if sn:
        L += ["", "## A small night after a year of history vs the same night on an empty store", ""]
        L += [f"Median of {SMALL_NIGHT_SAMPLES} samples each, the two stores taking turns.", ""]
        L += _table(
            ["night", "wall s", "CPU s", "peak RSS MB", "tree RSS MB", "load"],
            [
                [v["label"], v["wall_s"], v["cpu_s"], v["peak_rss_mb"], v["tree_rss_mb"], v["load_before"]]
                for v in sn.values()
            ],
        )
    if r.get("run_running"):
        L += ["", "## `run` with a running Prefect server (PREFECT_API_URL) vs the floor", ""]
        L += [
            "Each `run` right after a floor of its own (floor, run; floor, run; ...): the target is the",
            "median of the pairs' ratios. Wall, CPU and RSS: the median run.",
            "",
        ]
        L += _table(
            ["extract", "wall s", "x floor", "pairs (floor s / run s)", "CPU s", "peak RSS MB", "load"],
            [
                [
                    v["label"],
                    v["wall_s"],
                    v["vs_floor"],
                    ", ".join(f"{p['floor_s']:.2f} / {p['run_s']:.2f}" for p in v["pairs"]),
                    v["cpu_s"],
                    v["peak_rss_mb"],
                    v["load_before"],
                ]
                for v in r["run_running"].values()
            ],
        )

    L += ["", "## (a) Floor: Polars reads the extract CSV (all text) and writes Parquet", ""]
    if plan.repeats > 1:
        L += [f"Each floor is the median of {plan.repeats} runs.", ""]
    L += _table(
        ["extract", "rows", "wall s", "work s", "rows/s (wall)", "CPU s", "peak RSS MB", "load"],
        [
            [
                v["label"],
                v["rows"],
                v["wall_s"],
                v["detail"].get("work_s"),
                v["rows"] / v["wall_s"],
                v["cpu_s"],
                v["peak_rss_mb"],
                v["load_before"],
            ]
            for v in _by_size(r["floor"]).values()
        ],
    )

    L += ["", "## (b) `b12pipeline run` end to end (CLI subprocess, Prefect start-up included)", ""]
    runs = _by_size(r["run"])
    if r["prefect_startup"]:
        runs = {"tiny_50": r["prefect_startup"], **{k: v for k, v in runs.items() if k != "tiny_50"}}
    L += _table(
        [
            "extract",
            "rows read",
            "B12 in scope",
            "findings",
            "wall s",
            "rows/s (wall)",
            "x floor",
            "CPU s",
            "peak RSS MB",
            "tree RSS MB",
            "load",
        ],
        [
            [
                v["label"],
                v.get("rows_read") or v["rows"],
                v.get("in_scope"),
                v.get("findings"),
                v["wall_s"],
                v["rows"] / v["wall_s"],
                (v["wall_s"] / r["floor"][k]["wall_s"]) if k in r["floor"] else None,
                v["cpu_s"],
                v["peak_rss_mb"],
                v["tree_rss_mb"],
                v["load_before"],
            ]
            for k, v in runs.items()
            if k in r["floor"] or k == "tiny_50"
        ],
    )

    L += ["", "### Where the time goes: the night's steps in-process (no Prefect), seconds", ""]
    names = list(_by_size(r["profile"]))
    steps = _ordered_steps(r["profile"])
    rows = [[s] + [r["profile"][n]["detail"]["steps"].get(s) for n in names] for s in steps]
    rows.append(["**total (sum of steps)**"] + [r["profile"][n]["detail"].get("work_s") for n in names])
    rows.append(
        ["`run` wall minus the steps: Prefect start-up and tasks, checksums, archive copy, staging"]
        + [(r["run"][n]["wall_s"] - r["profile"][n]["detail"]["work_s"]) if n in r["run"] else None for n in names]
    )
    L += _table(["step"] + [r["profile"][n]["label"] for n in names], rows)
    L.append("")
    for n in names:
        st = r["profile"][n]["detail"].get("steps", {})
        total = sum(st.values()) or 1.0
        top = sorted(st.items(), key=lambda kv: -kv[1])[:3]
        L.append(
            f"- {r['profile'][n]['label']}: largest steps "
            + ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in top)
        )
    L += ["", "### Where the memory goes: the profile process's peak RSS after each step, MB", ""]
    rows = [[s] + [r["profile"][n]["detail"].get("peak_rss_after_mb", {}).get(s) for n in names] for s in steps]
    rows.append(["peak RSS of the profile process"] + [r["profile"][n]["peak_rss_mb"] for n in names])
    rows.append(["peak RSS of `run` (the CLI process)"] + [r["run"].get(n, {}).get("peak_rss_mb") for n in names])
    L += _table(["step"] + [r["profile"][n]["label"] for n in names], rows)

    L += [
        "",
        "## (c) Rule stage alone: facts frame -> findings",
        "",
        "`evaluate` called twice on the same facts; the first call includes compiling the rules (as a night",
        "does) and gives rows/s for the targets; the second shows the steady state.",
        "",
    ]
    L += _table(
        [
            "engine",
            "facts of",
            "rows",
            "rules",
            "findings",
            "first call s",
            "second call s",
            "rows/s",
            "agrees with polars",
            "peak RSS MB",
        ],
        [
            [
                v["engine"],
                v["label"],
                v["detail"]["rows"],
                v["detail"].get("rules"),
                v["detail"].get("findings"),
                v["detail"]["times_s"][0],
                v["detail"]["times_s"][-1],
                _rate(v),
                v["detail"].get("agrees_with_polars", "-"),
                v["peak_rss_mb"],
            ]
            for v in sorted(r["rules"].values(), key=lambda v: (v["engine"] != "polars", -v["detail"]["rows"]))
        ],
    )

    L += ["", "## Backfill: one night carrying a year of rows, then `b12pipeline backfill` over that year", ""]
    L += _table(
        [
            "history",
            "rows",
            "--chunk-days",
            "outcome",
            "one-night run s",
            "backfill s",
            "ratio",
            "backfill CPU s",
            "peak RSS MB",
            "tree RSS MB",
            "load",
        ],
        [
            [
                v["label"],
                v["rows"],
                str(v.get("chunk_days", "default")),
                v.get("outcome", "completed"),
                v["one_night_wall_s"],
                v["wall_s"],
                v["ratio"],
                v["cpu_s"],
                v["peak_rss_mb"],
                v["tree_rss_mb"],
                v["load_before"],
            ]
            for v in r["backfill"].values()
        ],
    )
    if r.get("preview"):
        L += ["", "## Rules preview: a changed ruleset over the same year of history (writes only previews/)", ""]
        L += _table(
            ["history", "rows", "one-night run s", "preview s", "ratio", "preview CPU s", "peak RSS MB", "load"],
            [
                [
                    v["label"],
                    v["rows"],
                    v["one_night_wall_s"],
                    v["wall_s"],
                    v["ratio"],
                    v["cpu_s"],
                    v["peak_rss_mb"],
                    v["load_before"],
                ]
                for v in r["preview"].values()
            ],
        )
    if r.get("bulk"):
        L += [
            "",
            "## (d) Ingest of a FHIR Bulk Data export vs the same administrations as canonical Parquet",
            "",
            "`read_extract` with the B12 scope, as a night calls it, in its own process; the export is",
            "`synth --format fhir-bulk` (standard resources, references across files, Claim lines) and the",
            "Parquet is `synth --format parquet` with the same seed. Read s = the read alone; peak RSS = the",
            "whole process (Python, Polars, the reader's indexes and the frame).",
            "",
        ]
        L += _table(
            [
                "administrations",
                "export MB",
                "Parquet read s",
                "export read s",
                "ratio (read)",
                "ratio (process wall)",
                "ratio (process CPU)",
                "Parquet peak RSS MB",
                "export peak RSS MB",
                "same rows",
                "load",
            ],
            [
                [
                    v["label"],
                    v["export_mb"],
                    v["parquet"]["detail"]["work_s"],
                    v["bulk"]["detail"]["work_s"],
                    v["ratio_work"],
                    v["ratio_wall"],
                    v.get("ratio_cpu"),
                    v["parquet"]["peak_rss_mb"],
                    v["bulk"]["peak_rss_mb"],
                    v["same_rows"],
                    v["bulk"]["load_before"],
                ]
                for v in r["bulk"].values()
            ],
        )
    if r.get("worklog"):
        L += ["", "## (e) Coders' worklog: the night's lifecycle update (embedded SQLite)", ""]
        L += [
            "The run's own findings, topped up to the open count with copies on the same dates (a backlog",
            "built over earlier nights); each night is one `update_night` call: first = every finding",
            "inserted as new, aging = the next night (all new -> open, each audited), steady = 1% corrected",
            "and 1% new (the typical night), same = that night re-run. % = of the same dataset's `run` wall.",
            "",
        ]
        L += _table(
            ["findings of", "open findings", "dates", "night", "seconds", "% of the run", "run wall s", "load"],
            [
                [
                    v["label"],
                    v["detail"]["open"],
                    v["detail"]["dates"],
                    night,
                    secs,
                    v["ratios"][night] * 100,
                    v["run_wall_s"],
                    v["load_before"],
                ]
                for v in r["worklog"].values()
                for night, secs in v["detail"]["times_s"].items()
            ],
        )
    pull = r.get("pull")
    if pull:
        L += ["", "## Pulling a night from PostgreSQL (`b12pipeline pull`, SQL source)", ""]
        if "pull_s" in pull:
            L += [
                "The shipped Clarity query over Clarity-shaped tables, streamed in batches into the archive's "
                "Parquet file, against `COPY (the same query) TO STDOUT WITH CSV` into a file, same server, same rows.",
                "",
            ]
            L += _table(
                ["administrations", "rows pulled", "COPY s", "pull s", "pull / COPY", "CSV MB", "Parquet MB"],
                [
                    [
                        pull["rows"],
                        pull["pull_rows"],
                        pull["copy_s"],
                        pull["pull_s"],
                        pull["ratio"],
                        pull["csv_mb"],
                        pull["parquet_mb"],
                    ]
                ],
            )
        else:
            L += [f"not measured: {pull.get('skipped') or pull.get('failed')}"]
    if r["synth"]:
        L += ["", "## Data generation (`b12pipeline synth`, not part of any measurement)", ""]
        L += _table(
            ["dataset", "rows", "wall s"], [[k, v["rows"], v["wall_s"]] for k, v in _by_size(r["synth"]).items()]
        )
    if r.get("review"):
        from review_bench import render as render_review

        L += ["", "## Review web app", "", *render_review(r["review"]).splitlines()]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK") == "1",
        help="small sizes (also BENCH_QUICK=1); exercises the harness, numbers mean nothing",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="RESULTS.md to write, RESULTS.json beside it (default bench/RESULTS.md; "
        "quick: $TMPDIR/b12bench-quick/RESULTS.md)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="data and outputs (default: a temp folder)")
    parser.add_argument("--date", default=None, help="date recorded in RESULTS.md (default: today)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (data, outputs, logs)")
    parser.add_argument(
        "--render", type=Path, default=None, help="only rewrite RESULTS.md from this RESULTS.json (no measuring)"
    )
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        plan = QUICK if data["mode"] == "quick" else FULL
        targets = evaluate_targets(plan, data["results"])
        out = args.out or args.render.with_suffix(".md")
        out.write_text(render(plan, data["machine"], data["results"], targets, data.get("elapsed_s", 0.0)))
        data["targets"] = targets
        args.render.write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"wrote {out}")
        return 0
    plan = QUICK if args.quick else FULL
    date = args.date or dt.date.today().isoformat()  # the script boundary reads the clock, nothing below
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="b12bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Quick results never overwrite the committed bench/RESULTS.md, and outlive the temp workdir.
    out = args.out or (
        Path(tempfile.gettempdir()) / "b12bench-quick" / "RESULTS.md" if plan.mode == "quick" else BENCH / "RESULTS.md"
    )
    facts = machine_facts(date)
    print(f"b12pipeline bench ({plan.mode}) in {workdir}")
    started = time.perf_counter()
    try:
        results = Bench(plan, workdir).all()
        targets = evaluate_targets(plan, results)
        elapsed = time.perf_counter() - started
        facts["loadavg_at_end"] = os.getloadavg()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(plan, facts, results, targets, elapsed))
        out.with_suffix(".json").write_text(
            json.dumps(
                {"mode": plan.mode, "machine": facts, "results": results, "targets": targets, "elapsed_s": elapsed},
                indent=2,
                default=str,
            )
            + "\n"
        )
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {out}")
    for t in targets.values():
        print(f"  {'MET    ' if t['met'] else 'NOT MET' if t['met'] is False else 'n/a    '} {t['target']}: {t['gap']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
