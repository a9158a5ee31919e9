"""Archive: every ingested extract kept byte-for-byte under <out>/archive, keyed by its SHA-256.

Layout: <out>/archive/<sha[:2]>/<sha>/<original name> plus <original name>.sha256 beside it (the
`sha256sum -c` format), and <out>/archive/index.jsonl with one line per archived file
({sha256, file, night, path}). The same file arriving twice (same bytes, any name) is recognised by
its checksum: it is neither copied nor indexed again.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

from b12pipeline.files import sha256_file

INDEX = "index.jsonl"
_LOCK = threading.Lock()  # nightly stages extracts in a thread pool: one archiver at a time


class ArchiveError(RuntimeError):
    """The archived copy does not have the checksum the file was processed with."""


@contextmanager
def _locked(archive_root: Path):
    """Threads of this process and other processes (a second CLI run) archive one at a time."""
    archive_root.mkdir(parents=True, exist_ok=True)
    with _LOCK, open(archive_root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def archive_index(archive_root: Path) -> list[dict]:
    index = archive_root / INDEX
    if not index.exists():
        return []
    entries = []
    for line in index.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a run killed mid-append: that file is simply archived again
    return [e for e in entries if isinstance(e, dict) and "sha256" in e]


def archived_checksums(archive_root: Path) -> set[str]:
    return {entry["sha256"] for entry in archive_index(archive_root)}


def _existing_copy(folder: Path) -> Path | None:
    copies = (  # a file, or a folder (a FHIR Bulk Data export)
        sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix != ".sha256")
        if folder.is_dir()
        else []
    )
    return copies[0] if copies else None


def archive_file(path: Path, sha256: str, archive_root: Path, night: str) -> Path:
    """Copy `path` into the archive once and return the archived copy.

    `sha256` is the checksum the file was processed with; the copy is verified against it, so the
    archive never holds bytes other than those that were ingested (e.g. a file still being written).
    """
    path = Path(path)
    with _locked(archive_root):
        folder = archive_root / sha256[:2] / sha256
        existing = _existing_copy(folder)
        if existing is not None and sha256_file(existing) == sha256:
            if sha256 not in archived_checksums(archive_root):  # copied, then crashed before indexing
                _append_index(archive_root, sha256, existing, night)
            return existing
        target = folder / path.name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            if path.is_dir():
                shutil.copytree(path, tmp)
            else:
                shutil.copyfile(path, tmp)
            actual = sha256_file(tmp)
            if actual != sha256:
                raise ArchiveError(
                    f"{path.name}: changed after it was read (checksum {actual[:12]}, "
                    f"processed as {sha256[:12]}); not archived"
                )
            tmp.replace(target)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            tmp.unlink(missing_ok=True)
        (folder / f"{path.name}.sha256").write_text(f"{sha256}  {path.name}\n")
        _append_index(archive_root, sha256, target, night)
        return target


def _append_index(archive_root: Path, sha256: str, target: Path, night: str) -> None:
    with open(archive_root / INDEX, "a+b") as fh:
        fh.seek(0, 2)
        if fh.tell():  # start on a fresh line even after a torn last line
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
    with open(archive_root / INDEX, "a") as fh:
        fh.write(
            json.dumps(
                {"sha256": sha256, "file": target.name, "night": night, "path": str(target.relative_to(archive_root))},
                sort_keys=True,
            )
            + "\n"
        )


EXTRACT_SUFFIXES = (".csv", ".txt", ".parquet", ".pq", ".ndjson", ".jsonl")
# `synth` writes its expected findings beside the extract as <extract>.labels.parquet: never an extract.
LABELS_SUFFIX = ".labels.parquet"


def landing_extracts(landing: Path, archive_root: Path) -> tuple[list[Path], list[Path]]:
    """(every extract file in `landing`, the ones whose checksum is not archived yet), sorted by name."""
    seen = archived_checksums(archive_root)
    candidates = sorted(
        p
        for p in landing.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() in EXTRACT_SUFFIXES
        and not p.name.lower().endswith(LABELS_SUFFIX)
    )
    return candidates, [p for p in candidates if sha256_file(p) not in seen]
