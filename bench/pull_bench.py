"""Pull speed: the night's rows from PostgreSQL into the archive's Parquet file, against COPY.

Starts a real PostgreSQL server (tests/postgres_server.py), loads N Clarity-shaped administrations,
then measures side by side on the same server and rows:
  copy  - `COPY (<the pull query>) TO STDOUT WITH CSV` into a local file (the fastest export there is)
  pull  - b12pipeline.pull.sql.pull_sql: the same query, streamed in batches into Parquet as text
and reports pull / copy. Run alone: python bench/pull_bench.py ROWS
"""

from __future__ import annotations

import datetime as dt
import io
import resource
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

NIGHT = dt.date(2024, 3, 31)


def _load(conn, rows: int) -> None:
    """N administrations over 30 days, every table the query joins (COPY FROM, generated in memory)."""
    from tests.clarity_tables import TABLES

    cur = conn.cursor()
    for name, columns in TABLES.items():
        cur.execute(f"CREATE TABLE {name} ({columns})")

    def copy(table: str, lines) -> None:
        buf = io.StringIO()
        for line in lines:
            buf.write("\t".join("\\N" if v is None else str(v) for v in line) + "\n")
        buf.seek(0)
        with cur.copy(f"COPY {table} FROM STDIN") as c:
            while chunk := buf.read(1 << 20):
                c.write(chunk)

    start = dt.datetime(2024, 3, 2, 8, 0)
    copy(
        "MAR_ADMIN_INFO",
        (
            (f"O{i}", 1, f"CSN{i // 3}", start + dt.timedelta(seconds=i * 2_592_000 // rows), "1", "1000", "3", "6",
             "1", f"RN{i % 50}")
            for i in range(rows)
        ),
    )  # fmt: skip
    copy("MAR_ADDL_INFO", ((f"O{i}", 1, "0517-0031-25", f"LOT{i % 97}", "2026-06-30", None) for i in range(rows)))
    copy("ORDER_MED", ((f"O{i}", f"P{i % 20000}", 1, 1) for i in range(rows)))
    copy("PATIENT", ((f"P{i}", f"MRN{i:08d}") for i in range(20000)))
    copy("CLARITY_MEDICATION", [(1, "cyanocobalamin 1,000 mcg/mL injection solution", None, None, None)])
    copy("RXNORM_CODES", [(1, 1, "309594")])
    copy("CLARITY_SER_2", [(1, "1234567893")])
    copy("EDG_CURRENT_ICD10", [(1, "D51.0"), (2, "E53.8")])
    copy("ORDER_DX_MED", ((f"O{i}", 1 + k, 1 + k) for i in range(rows) for k in range(2)))
    copy("PAT_ENC", ((f"CSN{i}", "11", "PB", "2") for i in range((rows + 2) // 3)))
    copy(
        "HSP_TRANSACTIONS",
        (
            (2 * i + k, f"O{i}", f"CSN{i // 3}", (start + dt.timedelta(seconds=i * 2_592_000 // rows)).date(),
             "J3420" if k == 0 else None, None if k == 0 else "96372", "1" if k == 0 else None, None)
            for i in range(rows)
            for k in range(2)
        ),
    )  # fmt: skip
    copy("HSP_TX_NDC_CODES", ((2 * i, "1", "1") for i in range(rows)))
    for stmt in (
        "CREATE INDEX ON MAR_ADMIN_INFO (TAKEN_TIME)",
        "CREATE INDEX ON MAR_ADMIN_INFO (ORDER_MED_ID, LINE)",
        "CREATE INDEX ON ORDER_MED (ORDER_MED_ID)",
        "CREATE INDEX ON MAR_ADDL_INFO (ORDER_MED_ID, LINE)",
        "CREATE INDEX ON ORDER_DX_MED (ORDER_MED_ID)",
        "CREATE INDEX ON PAT_ENC (PAT_ENC_CSN_ID)",
        "CREATE INDEX ON PATIENT (PAT_ID)",
        "CREATE INDEX ON HSP_TRANSACTIONS (ORDER_ID, SERVICE_DATE)",
        "CREATE INDEX ON HSP_TRANSACTIONS (PAT_ENC_CSN_ID, SERVICE_DATE)",
        "CREATE INDEX ON HSP_TX_NDC_CODES (TX_ID)",
        "ANALYZE",
    ):
        cur.execute(stmt)
    conn.commit()


def measure(rows: int) -> dict:
    """{"rows", "copy_s", "pull_s", "ratio", "pull_rows", "parquet_mb", "csv_mb", "peak_rss_mb"}."""
    import psycopg

    from b12pipeline.pull.config import PullSource
    from b12pipeline.pull.sql import night_window, pull_sql
    from tests.postgres_server import PostgresServer

    why = PostgresServer.unavailable()
    if why:
        return {"rows": rows, "skipped": why}
    with PostgresServer.start() as server, tempfile.TemporaryDirectory(prefix="b12-pullbench-") as tmp:
        url = server.create_database("pullbench")
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            _load(conn, rows)
        source = PullSource(
            "bench", "sql", {"url": url, "query": "clarity.sql", "lookback_days": 30, "batch_rows": 50_000}
        )
        query = source.query_path("postgresql").read_text()
        start, end = night_window(NIGHT, 30)
        csv = Path(tmp) / "copy.csv"
        with psycopg.connect(dsn) as conn:
            literal = query.replace(":start", f"'{start.isoformat(sep=' ')}'").replace(
                ":end", f"'{end.isoformat(sep=' ')}'"
            )
            began = time.perf_counter()
            with conn.cursor().copy(f"COPY ({literal}) TO STDOUT WITH CSV HEADER") as c, open(csv, "wb") as fh:
                for chunk in c:
                    fh.write(chunk)
            copy_s = time.perf_counter() - began
        # Warm up: imports and the driver's first connection are the run's fixed cost, not the pull's.
        warm = PullSource("warm", "sql", {**source.settings, "lookback_days": 0})
        pull_sql(warm, dt.date(2024, 3, 2), Path(tmp) / "warm.parquet")
        target = Path(tmp) / "pulled.parquet"
        began = time.perf_counter()
        pulled = pull_sql(source, NIGHT, target)
        pull_s = time.perf_counter() - began
        return {
            "rows": rows,
            "pull_rows": pulled,
            "copy_s": round(copy_s, 3),
            "pull_s": round(pull_s, 3),
            "ratio": round(pull_s / copy_s, 2) if copy_s else None,
            "csv_mb": round(csv.stat().st_size / 1e6, 1),
            "parquet_mb": round(target.stat().st_size / 1e6, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }


if __name__ == "__main__":
    import json

    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)))
