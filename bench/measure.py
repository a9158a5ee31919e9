#!/usr/bin/env python3
"""One measurement, run by bench/run_bench.py in its own subprocess (so peak RSS is this one's).

    measure.py floor   --extract X.csv --out X.parquet          --json R.json
    measure.py profile --extract X.csv --work DIR --facts F.parquet --json R.json
    measure.py rules   --facts F.parquet --engine polars|durable [--limit N] --json R.json
    measure.py ingest  --extract X.parquet|EXPORT_DIR                         --json R.json
    measure.py worklog --out RUN_OUT --open N [--work DIR]                    --json R.json

Each command writes its timings (seconds, perf_counter around the work only) to --json; the driver
adds wall time, CPU time and peak RSS of the whole process. Counts only: no row values.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

T_START = time.perf_counter()
# The profile's steps, in the order the night runs them (run_bench.py orders its tables by this).
STEPS = (
    "import",
    "load rules",
    "ingest (read_extract)",
    "validate (GX + row masks)",
    "stage rows (one file per date)",
    "merge into history",
    "read history",
    "normalize.facts",
    "cross-row facts",
    "evaluate (polars rules)",
    "write queue partitions",
)


def _write(path: str, payload: dict) -> None:
    # No sort_keys: the profile steps keep their order.
    Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def floor(args: argparse.Namespace) -> dict:
    """The floor: Polars reads the extract (every column as text, as ingest does) and writes Parquet."""
    import polars as pl

    t = time.perf_counter()
    frame = pl.read_csv(args.extract, infer_schema=False)
    t_read = time.perf_counter()
    frame.write_parquet(args.out)
    t_write = time.perf_counter()
    return {"rows": frame.height, "read_s": t_read - t, "write_s": t_write - t_read, "work_s": t_write - t}


def profile(args: argparse.Namespace) -> dict:
    """The night's steps in-process, timed one by one (the same library calls stage_file and
    apply_staged make, minus Prefect), and the facts frame saved for the rule-stage measurements."""
    import resource

    steps: dict[str, float] = {}
    rss: dict[str, float] = {}  # the process's peak RSS so far, after each step (MB)

    def step(name: str, t0: float) -> float:
        now = time.perf_counter()
        steps[name] = now - t0
        rss[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return now

    t = time.perf_counter()

    from b12pipeline import normalize
    from b12pipeline.crossrow import add_cross_row_facts
    from b12pipeline.engine.evaluate import evaluate
    from b12pipeline.facts import payer_facts
    from b12pipeline.history import merge_into_history, read_for_dates, stage_rows
    from b12pipeline.ingest.read import read_extract
    from b12pipeline.pipeline import Rules, lookback_days
    from b12pipeline.queues import write_queue_partitions
    from b12pipeline.validate import validate

    t = step("import", t)
    rules = Rules.load(args.rules)
    t = step("load rules", t)
    # As stage_file does: the reader returns only B12-scope rows (the scope filter is part of ingest).
    extract = read_extract(
        Path(args.extract), None, keep=normalize.b12_scope(rules.reference), time_zone=rules.config.time_zone
    )
    t = step("ingest (read_extract)", t)
    b12 = extract.frame
    outcome = validate(b12)
    t = step("validate (GX + row masks)", t)
    work = Path(args.work)
    stage_rows(outcome.valid, work / "staged")
    t = step("stage rows (one file per date)", t)
    touched = merge_into_history(work / "history", [work / "staged"])
    t = step("merge into history", t)
    # As the night reads it (history.read_for_dates); the night then derives facts a few whole
    # patients at a time (pipeline.EVALUATE_ROWS), here over all rows at once to time each step.
    canonical = read_for_dates(work / "history", touched, lookback_days(rules.config))
    t = step("read history", t)
    facts = normalize.facts(canonical, rules.reference, rules.config)
    t = step("normalize.facts", t)
    facts = add_cross_row_facts(facts, rules.config)
    t = step("cross-row facts", t)
    facts = payer_facts(facts, rules.config, rules.ruleset.payers)
    t = step("payer overrides", t)
    findings = evaluate(facts, rules.ruleset, rules.config, "bench")
    t = step("evaluate (polars rules)", t)
    write_queue_partitions(findings, work / "queues", touched)
    t = step("write queue partitions", t)
    facts.write_parquet(args.facts)
    return {
        "rows_read": extract.rows,
        "b12_rows": b12.height,
        "valid_rows": outcome.valid.height,
        "facts_rows": facts.height,
        "findings": findings.height,
        "dates": len(touched),
        "steps": steps,
        "peak_rss_after_mb": rss,
        "work_s": sum(steps.values()),
    }


def rules_stage(args: argparse.Namespace) -> dict:
    """The rule stage alone: facts frame -> findings, with the chosen engine, on the first N rows.

    Called twice: the first call includes compiling the rules (Polars expressions / durable
    rulesets), as a night's single call does; the second shows the steady state."""
    import polars as pl

    from b12pipeline.engine.engines import evaluator
    from b12pipeline.engine.evaluate import evaluate
    from b12pipeline.pipeline import Rules

    rules = Rules.load(args.rules)
    facts = pl.read_parquet(args.facts)
    if args.limit:
        facts = facts.head(args.limit)
    run = evaluator(args.engine)
    times = []
    findings = None
    for _ in range(args.repeat):
        t = time.perf_counter()
        findings = run(facts, rules.ruleset, rules.config, "bench")
        times.append(time.perf_counter() - t)
    result = {
        "engine": args.engine,
        "rows": facts.height,
        "findings": findings.height,
        "rules": len(rules.ruleset.active),
        "times_s": times,
        "work_s": min(times),
    }
    if args.engine != "polars":
        # Same rows, same findings: the comparison is only fair if both engines agree.
        reference = evaluate(facts, rules.ruleset, rules.config, "bench")
        key = ["rule_id", "admin_id"]
        result["agrees_with_polars"] = findings.select(key).sort(key).equals(reference.select(key).sort(key))
    return result


def ingest(args: argparse.Namespace) -> dict:
    """Ingest alone, as stage_file calls it (B12 scope applied by the reader): the read of one
    extract, whatever its format, into the canonical frame."""
    import resource

    from b12pipeline import normalize
    from b12pipeline.ingest.read import read_extract
    from b12pipeline.paths import rules_dir
    from b12pipeline.reference import load_reference

    scope = normalize.b12_scope(load_reference(rules_dir() / "reference"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    extract = read_extract(Path(args.extract), None, keep=scope)
    work = time.perf_counter() - t
    return {
        "format": extract.source_format,
        "rows_read": extract.rows,
        "b12_rows": extract.frame.height,
        "quarantined": extract.quarantined_rows,
        "work_s": work,
        "peak_rss_before_read_mb": before,
    }


def worklog(args: argparse.Namespace) -> dict:
    """The worklog's lifecycle update on nights with `--open` open findings (embedded SQLite).

    The findings are the run's own (RUN_OUT's queues), topped up to N with copies under other ids on
    the same dates (a backlog built over earlier nights). Timed, each its own night's update_night:
      first    N findings never seen: every one inserted as new
      aging    the same N again the next night: N new -> open (each audited)
      steady   the next night, 1% of them corrected (resolved) and 1% new: the typical night
      same     the same night re-run: nothing changes
    """
    import polars as pl

    from b12pipeline.paths import OutputLayout
    from b12pipeline.queues import read_queue
    from b12pipeline.worklog import open_worklog, update_night
    from b12pipeline.worklog.lifecycle import KEY_COLUMNS

    real = read_queue(OutputLayout(Path(args.out)).queues).select(KEY_COLUMNS)
    copies = []
    k = 0
    while real.height * (k + 1) < args.open:
        k += 1
        copies.append(real.with_columns((pl.col("finding_id") + f"-{k}").alias("finding_id")))
    backlog = pl.concat([real, *copies]).head(args.open)
    dates = sorted(backlog["service_date"].unique().to_list())
    one_pct = max(1, backlog.height // 100)
    steady = pl.concat(
        [
            backlog.slice(one_pct),
            backlog.head(one_pct).with_columns((pl.col("finding_id") + "-new").alias("finding_id")),
        ]
    )
    work = Path(args.work or tempfile.mkdtemp(prefix="b12bench-worklog-"))
    engine = open_worklog(url=f"sqlite:///{work / 'worklog.sqlite'}")
    night = dt.date(2025, 1, 15)
    times, counts = {}, {}
    for name, frame, day in (
        ("first", backlog, night),
        ("aging", backlog, night + dt.timedelta(days=1)),
        ("steady", steady, night + dt.timedelta(days=2)),
        ("same", steady, night + dt.timedelta(days=2)),
    ):
        t = time.perf_counter()
        done = update_night(engine, frame, dates, night=day, run_id=f"bench-{day}")
        times[name] = time.perf_counter() - t
        counts[name] = {k: v for k, v in done.to_dict().items() if k != "snapshot"}
    engine.dispose()
    return {
        "open": backlog.height,
        "run_findings": real.height,
        "dates": len(dates),
        "times_s": times,
        "counts": counts,
        "work_s": sum(times.values()),
        "db_mb": sum(f.stat().st_size for f in work.glob("worklog.sqlite*")) / 1e6,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("floor")
    p.add_argument("--extract", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("profile")
    p.add_argument("--extract", required=True)
    p.add_argument("--work", default=None)
    p.add_argument("--facts", required=True)
    p = sub.add_parser("rules")
    p.add_argument("--facts", required=True)
    p.add_argument("--engine", default="polars")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--repeat", type=int, default=2)
    p = sub.add_parser("ingest")
    p.add_argument("--extract", required=True)
    p = sub.add_parser("worklog")
    p.add_argument("--out", required=True)
    p.add_argument("--open", type=int, default=100_000)
    p.add_argument("--work", default=None)
    for p in sub.choices.values():
        p.add_argument("--json", required=True)
        p.add_argument("--rules", default=None, help="rules folder (bench/bench_rules.py builds one)")
    args = parser.parse_args(argv)
    if args.command == "profile" and args.work is None:
        args.work = tempfile.mkdtemp(prefix="b12bench-")
    commands = {"floor": floor, "profile": profile, "rules": rules_stage, "ingest": ingest, "worklog": worklog}
    result = commands[args.command](args)
    result["process_s"] = time.perf_counter() - T_START
    _write(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
