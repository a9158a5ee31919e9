"""Archive: every ingested extract kept byte-for-byte under <out>/archive, keyed by its SHA-256.

The same file arriving twice (same bytes, any name) is recognised by its checksum.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

INDEX = "index.jsonl"


def archived_checksums(archive_root: Path) -> set[str]:
    index = archive_root / INDEX
    if not index.exists():
        return set()
    return {json.loads(line)["sha256"] for line in index.read_text().splitlines() if line.strip()}


def archive_file(path: Path, sha256: str, archive_root: Path, night: str) -> Path:
    """Copy `path` into the archive once; returns the archived copy."""
    target = archive_root / sha256[:2] / sha256 / path.name
    if sha256 in archived_checksums(archive_root) and target.parent.exists():
        existing = next(target.parent.iterdir(), None)
        if existing is not None:
            return existing
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(path, tmp)
    tmp.replace(target)
    with open(archive_root / INDEX, "a") as fh:
        fh.write(json.dumps({"sha256": sha256, "file": path.name, "night": night,
                             "path": str(target.relative_to(archive_root))}, sort_keys=True) + "\n")
    return target


EXTRACT_SUFFIXES = (".csv", ".txt", ".parquet", ".pq", ".ndjson", ".jsonl")


def landing_extracts(landing: Path, archive_root: Path) -> tuple[list[Path], list[Path]]:
    """(every extract file in `landing`, the ones whose checksum is not archived yet), sorted by name."""
    from b12pipeline.pipeline import sha256_file   # pipeline imports this module's neighbours

    seen = archived_checksums(archive_root)
    candidates = sorted(p for p in landing.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() in EXTRACT_SUFFIXES)
    return candidates, [p for p in candidates if sha256_file(p) not in seen]
