"""`b12pipeline synth`: write a seeded synthetic extract and its expected findings (labels)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from b12pipeline.cli.common import EXIT_OK, console, parse_date, usage_error
from b12pipeline.cli.feedback import feedback, quiet_option


def register(app: typer.Typer) -> None:
    @app.command()
    def synth(
        rows: int = typer.Option(..., "--rows", "-n", help="Rows in the extract (B12 and other medications)."),
        seed: int = typer.Option(0, "--seed", "-s", help="Random seed: the same seed gives the same file."),
        fmt: str = typer.Option(
            "csv",
            "--format",
            "-f",
            help="csv, parquet, clarity (Clarity-style CSV), fhir (NDJSON) or fhir-bulk "
            "(a FHIR Bulk Data export folder of standard resources).",
        ),
        out: Path = typer.Option(
            ..., "--out", "-o", help="File (folder for fhir-bulk) to write; labels go to <OUT>.labels.parquet."
        ),
        defect_rate: float = typer.Option(0.05, "--defect-rate", help="Share of B12 rows carrying one seeded defect."),
        b12_share: float = typer.Option(0.25, "--b12-share", help="Share of rows that are B12 administrations."),
        start: Optional[str] = typer.Option(
            None, "--start", help="First date of service (YYYY-MM-DD); default 2024-01-02."
        ),
        days: int = typer.Option(120, "--days", help="Dates of service span this many days."),
        quiet: bool = quiet_option,
    ) -> None:
        """Write a realistic synthetic eMAR extract with seeded defects and their labels."""
        from b12pipeline import synth as generator
        from b12pipeline.writers import FORMATS, labels_path, write_extract

        if fmt not in FORMATS:
            raise usage_error(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
        if rows < 1 or days < 1:
            raise usage_error("--rows and --days must be at least 1")
        if not 0 <= defect_rate <= 1 or not 0 < b12_share <= 1:
            raise usage_error("--defect-rate must be in [0, 1] and --b12-share in (0, 1]")
        writes_folder = fmt == "fhir-bulk"
        if out.exists() and out.is_dir() != writes_folder:
            kind = "a folder" if writes_folder else "a file"
            raise usage_error(f"--out {out} exists and is not {kind}: --format {fmt} writes {kind}")
        if not out.parent.is_dir():
            raise usage_error(f"--out {out}: folder {out.parent} does not exist")
        first = parse_date(start, "--start") or generator.DEFAULT_START
        with feedback(f"synth seed {seed}", quiet) as shown:
            shown.step(f"generating {rows:,} rows")
            t0 = time.perf_counter()
            result = generator.generate(
                rows, seed=seed, defect_rate=defect_rate, b12_share=b12_share, start=first, days=days
            )
            t1 = time.perf_counter()
            c = result.counts
            shown.step(f"generated {c['b12_rows']:,} B12 rows, {c['labels']:,} expected findings; writing {fmt}")
            write_extract(result.frame, fmt, out)
            result.labels.write_parquet(labels_path(out))
            t2 = time.perf_counter()
            shown.step("done")
        console.print(
            f"wrote {out} ({fmt}): {c['rows']:,} rows, {c['b12_rows']:,} B12, "
            f"{c['labels']:,} expected findings over {len(c['labels_per_rule'])} rules "
            f"(generated in {t1 - t0:.1f} s, written in {t2 - t1:.1f} s)"
        )
        console.print(f"labels: {labels_path(out)}")
        raise typer.Exit(EXIT_OK)
