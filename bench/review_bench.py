#!/usr/bin/env python3
"""The review web app at scale: the queue page and the API list with 100k open findings.

    python bench/review_bench.py [--findings 100000] [--workdir DIR] [--json OUT]

Builds two output roots with the library's own writers (queues.write_queue_partitions,
worklog.update_night): one whose coding queue holds N open findings over 120 dates of service, and
one with an empty coding queue. Each is served by the real `b12pipeline review` process; requests go
over HTTP from this process. Per request kind: the first (cold) time, then the median and p95 of
repeated requests, and the first page after a change through the API (the worklog is re-read).
The ratio compares the 100k queue page with the empty queue's page, measured side by side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "tests"))

REPEAT = 15
NIGHT = dt.date(2025, 1, 15)
FIRST_DATE = dt.date(2024, 9, 1)
DAYS = 120
PAYERS = ("medicare", "medicaid", "commercial", "self_pay")


def build_store(out: Path, findings: int) -> None:
    """An output root with `findings` open findings in the coding queue and the worklog after the
    night that first saw them."""
    import polars as pl

    from b12pipeline.engine.evaluate import FINDING_COLUMNS
    from b12pipeline.paths import OutputLayout
    from b12pipeline.queues import write_queue_partitions
    from b12pipeline.rulesets import load_ruleset
    from b12pipeline.worklog import open_worklog, update_night

    layout = OutputLayout(out)
    layout.queues.mkdir(parents=True, exist_ok=True)
    for queue in ("coding", "medical_necessity", "documentation"):
        (layout.queues / queue).mkdir(exist_ok=True)
    dates = [FIRST_DATE + dt.timedelta(days=i) for i in range(DAYS)]
    engine = open_worklog(out)
    if findings == 0:
        return
    rules = [r for r in load_ruleset().active if r.queue == "coding"]
    i = pl.int_range(findings, eager=True)
    admin = pl.format("ADM-{}", i)
    frame = pl.DataFrame({"i": i}).with_columns(
        admin_id=admin,
        rule_id=pl.lit([r.id for r in rules]).list.get(i % len(rules)),
        service_date=pl.lit(dates).list.get(i % DAYS),
    )
    severity = {r.id: r.severity for r in rules}
    version = {r.id: str(r.version) for r in rules}
    frame = frame.with_columns(
        finding_id=pl.concat_str("admin_id", "rule_id").hash().cast(pl.String).str.slice(0, 20),
        queue=pl.lit("coding"),
        rule_version=pl.col("rule_id").replace_strict(version),
        ruleset_version=pl.lit("bench"),
        severity=pl.col("rule_id").replace_strict(severity),
        message=pl.format("Synthetic finding {} for the review benchmark", "i"),
        expected=pl.lit("J3420 x 2"),
        actual=pl.lit("J3420 x 1"),
        patient_id=pl.format("PT-{}", pl.col("i") // 7),
        encounter_id=pl.format("ENC-{}", pl.col("i") // 3),
        admin_time=pl.col("service_date").cast(pl.Datetime("us")),
        medication_name=pl.lit("cyanocobalamin 1,000 mcg/mL injection solution"),
        ndc11=pl.lit("00517003125"),
        dose_mcg=pl.lit(1000.0),
        route=pl.lit("IM"),
        source_file=pl.lit("bench.csv"),
        source_row=pl.col("i") + 1,
        run_id=pl.lit("night-bench"),
    )
    frame = frame.with_columns(payer_type=pl.lit(list(PAYERS)).list.get(pl.col("i") % len(PAYERS)))
    frame = frame.select(
        [(pl.col(c) if c in frame.columns else pl.lit(None)).cast(t).alias(c) for c, t in FINDING_COLUMNS.items()]
    )
    write_queue_partitions(frame, layout.queues, dates)
    update_night(engine, frame, dates, night=NIGHT, run_id="night-bench")


def timed(http, path: str, method: str = "GET", **kw) -> float:
    started = time.perf_counter()
    response = http.request(method, path, **kw)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{method} {path}: {response.status_code}")
    return elapsed


def measure_server(out: Path, log: Path, paths: dict[str, str]) -> dict:
    import re

    import httpx
    from review_support import review_server

    results: dict = {}
    with review_server(out, log) as base, httpx.Client(base_url=base, timeout=120) as http:
        for name, path in paths.items():
            cold = timed(http, path)
            runs = [timed(http, path) for _ in range(REPEAT)]
            results[name] = {
                "cold_ms": cold,
                "median_ms": statistics.median(runs),
                "p95_ms": sorted(runs)[max(int(len(runs) * 0.95) - 1, 0)],
            }
        page = http.get("/queues/coding").text
        ids = re.findall(r'data-finding="([0-9a-f]+)"', page)
        if ids:
            token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
            after = []
            for n, finding_id in enumerate(ids[:5]):
                http.patch(
                    f"/api/findings/{finding_id}",
                    content=json.dumps({"owner": f"bench{n}"}),
                    headers={"Content-Type": "application/json", "X-CSRF-Token": token},
                ).raise_for_status()
                after.append(timed(http, "/queues/coding"))
            results["queue_page_after_a_change"] = {"median_ms": statistics.median(after), "p95_ms": max(after)}
    return results


PATHS = {
    "queue_page": "/queues/coding",
    "queue_page_sorted_by_rule": "/queues/coding?sort=rule_id&dir=desc&page=500",
    "queue_page_filtered_sorted": "/queues/coding?rule=UNITS-001&sort=severity&dir=desc&page=20",
    "api_list": "/api/findings?queue=coding",
    "api_list_filtered_page": "/api/findings?queue=coding&payer=medicare&sort=service_date&dir=desc&page=100",
}


def run(workdir: Path, findings: int) -> dict:
    big, empty = workdir / f"review_{findings}", workdir / "review_empty"
    started = time.perf_counter()
    build_store(big, findings)
    build_s = time.perf_counter() - started
    build_store(empty, 0)
    result = {
        "findings": findings,
        "build_s": build_s,
        "big": measure_server(big, workdir / "review_big.log", PATHS),
        "empty": measure_server(empty, workdir / "review_empty.log", PATHS),
    }
    result["ratio_queue_page"] = result["big"]["queue_page"]["median_ms"] / result["empty"]["queue_page"]["median_ms"]
    result["ratio_api_list"] = result["big"]["api_list"]["median_ms"] / result["empty"]["api_list"]["median_ms"]
    return result


def render(r: dict) -> str:
    n = f"{r['findings'] // 1000}k" if r["findings"] >= 1000 else str(r["findings"])
    lines = [
        f"### Review web app: {r['findings']:,} open findings in the coding queue vs an empty queue",
        "",
        f"| request | {n} cold ms | {n} median ms | {n} p95 ms | empty median ms | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in (*PATHS, "queue_page_after_a_change"):
        big, empty = r["big"].get(name, {}), r["empty"].get(name, {})
        ratio = big["median_ms"] / empty["median_ms"] if empty.get("median_ms") else None
        lines.append(
            f"| {name} | {big.get('cold_ms', float('nan')):.0f} | {big['median_ms']:.0f} | {big['p95_ms']:.0f} | "
            f"{empty.get('median_ms', float('nan')):.0f} | {'' if ratio is None else f'{ratio:.1f}x'} |"
        )
    lines.append("")
    lines.append(
        "Median of repeated requests over HTTP to the real `b12pipeline review` server (cold = the first "
        "request, which reads the queues and the worklog); after a change = the queue page right after a "
        "PATCH, when the worklog's states are read again. Target: queue page and API list < 300 ms."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--findings", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="b12review-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = run(workdir, args.findings)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
