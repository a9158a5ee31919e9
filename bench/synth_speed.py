#!/usr/bin/env python3
"""Generation speed of `b12pipeline synth` (target: 1M rows well under a minute on 2 cores).

python bench/synth_speed.py [ROWS]      # default 1,000,000
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from b12pipeline import synth
from b12pipeline.writers import write_extract


def main(rows: int) -> None:
    t = time.perf_counter()
    night = synth.generate(rows, seed=1)
    gen = time.perf_counter() - t
    print(f"generate {rows:,} rows ({night.counts['b12_rows']:,} B12, {night.labels.height:,} labels): {gen:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, suffix in (("csv", "csv"), ("parquet", "parquet"), ("clarity", "csv")):
            t = time.perf_counter()
            write_extract(night.frame, fmt, Path(tmp) / f"x_{fmt}.{suffix}")
            print(f"write {fmt:8s}: {time.perf_counter() - t:.1f} s")
    if gen > 60:
        raise SystemExit(f"too slow: {gen:.1f} s > 60 s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
