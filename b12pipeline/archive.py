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
    checksums = set()
    for line in index.read_text().splitlines():
        try:
            checksums.add(json.loads(line)["sha256"])
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a run killed mid-append: that file is simply archived again
    return checksums


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
    with open(archive_root / INDEX, "a+b") as fh:
        fh.seek(0, 2)
        if fh.tell():  # start on a fresh line even after a torn last line
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
    with open(archive_root / INDEX, "a") as fh:
        fh.write(json.dumps({"sha256": sha256, "file": path.name, "night": night,
                             "path": str(target.relative_to(archive_root))}, sort_keys=True) + "\n")
    return target
