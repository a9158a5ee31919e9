"""Archive: every ingested extract kept byte-for-byte under <out>/archive, keyed by its SHA-256.

Layout: <out>/archive/<sha[:2]>/<sha>/<original name> plus <original name>.sha256 beside it (the
`sha256sum -c` format), and <out>/archive/index.jsonl with one line per archived file
({sha256, file, night, path}). The same file arriving twice (same bytes, any name) is recognised by
its checksum: it is neither copied nor indexed again.

The index is also the landing folder's ledger: a rejected file gets a line with
`"status": "rejected"` (its bytes are in rejected/). A night's lines are appended in one write,
as the night's last step (`commit_night`): until then nothing of the night is recorded as done, so
a run killed at any earlier point is simply run again on the same files, with the same result.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from b12pipeline.files import copy_no_follow, sha256_file

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
    """Checksums of processed (archived) files."""
    return {e["sha256"] for e in archive_index(archive_root) if e.get("status", "processed") == "processed"}


def rejected_checksums(archive_root: Path) -> set[str]:
    """Checksums of files a completed night rejected (their bytes are in rejected/)."""
    return {e["sha256"] for e in archive_index(archive_root) if e.get("status") == "rejected"}


def _existing_copy(folder: Path) -> Path | None:
    copies = (  # a file, or a folder (a FHIR Bulk Data export)
        sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix != ".sha256")
        if folder.is_dir()
        else []
    )
    return copies[0] if copies else None


def archive_file(path: Path, sha256: str, archive_root: Path, night: str) -> Path:
    """Copy `path` into the archive once, index it, and return the archived copy (see `copy_into_archive`)."""
    target = copy_into_archive(path, sha256, archive_root)
    with _locked(archive_root):
        if sha256 not in archived_checksums(archive_root):
            _append_lines(archive_root, [_entry(sha256, target, archive_root, night)])
    return target


def copy_into_archive(path: Path, sha256: str, archive_root: Path) -> Path:
    """Copy `path` into the archive (once per checksum) without indexing it; return the copy.

    `sha256` is the checksum the file was processed with; the copy is verified against it, so the
    archive never holds bytes other than those that were ingested (e.g. a file still being written).
    """
    path = Path(path)
    with _locked(archive_root):
        folder = archive_root / sha256[:2] / sha256
        existing = _existing_copy(folder)
        if existing is not None and sha256_file(existing) == sha256:
            return existing
        target = folder / path.name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            if path.is_dir() and not path.is_symlink():  # a FHIR Bulk Data export folder
                shutil.copytree(path, tmp, symlinks=True)
            else:
                copy_no_follow(path, tmp)
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
        return target


def _entry(sha256: str, target: Path, archive_root: Path, night: str, **extra) -> dict:
    path = str(target.relative_to(archive_root)) if target.is_relative_to(archive_root) else target.name
    return {"sha256": sha256, "file": target.name, "night": night, "path": path, **extra}


def copy_for_night(archive_root: Path, processed: list[tuple[Path, str]]) -> tuple[list[tuple[Path, str]], list[str]]:
    """Copy each processed `(path, sha256)` into the archive, unindexed (`copy_into_archive`): nothing
    marks a file done until `commit_night`, so the copies can be made while the night still works.

    Returns the `(copy, sha256)` of each file copied, and the problems of files not copied (changed
    since they were read): they stay unrecorded, so the next night reads them again."""
    copies, problems = [], []
    for path, sha in processed:
        try:
            copies.append((copy_into_archive(path, sha, archive_root), sha))
        except ArchiveError as exc:
            problems.append(str(exc))
    return copies, problems


def commit_night(
    archive_root: Path, night: str, run_id: str, copies: list[tuple[Path, str]], rejected: list[tuple[str, str]]
) -> None:
    """The night's last step: record its archived copies (`copy_for_night`) and its rejected files
    (`(name in rejected/, sha256)`) in the index with one append. Nothing before this marks a file
    as done, so a run killed earlier is re-run whole; entries already recorded are not repeated."""
    with _locked(archive_root):
        done, refused = archived_checksums(archive_root), rejected_checksums(archive_root)
        lines = [_entry(sha, copy, archive_root, night, run_id=run_id) for copy, sha in copies if sha not in done]
        lines += [
            {"sha256": sha, "file": name, "night": night, "path": f"../rejected/{name}", "run_id": run_id}
            | {"status": "rejected"}
            for name, sha in rejected
            if sha and sha not in refused
        ]
        _append_lines(archive_root, lines)


def _append_lines(archive_root: Path, entries: list[dict]) -> None:
    """Append `entries` in one write (after mending a torn last line), fsynced."""
    if not entries:
        return
    data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode()
    with open(archive_root / INDEX, "a+b") as fh:
        fh.seek(0, 2)
        if fh.tell():  # start on a fresh line even after a torn last line
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                data = b"\n" + data
        fh.seek(0, 2)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# `synth` writes its expected findings beside the extract as <extract>.labels.parquet: never an extract.
LABELS_SUFFIX = ".labels.parquet"
# Files in a landing folder that are not read, by a rule the summary and the manifest state.
IGNORED = (
    (lambda p: p.name.startswith("."), "hidden (dot) file"),
    (lambda p: p.name.endswith(".part"), "still being written (*.part)"),
    (lambda p: p.is_dir() and not p.is_symlink(), "a folder"),
    (lambda p: p.name.lower().endswith(LABELS_SUFFIX), "synthetic labels (*.labels.parquet)"),
)


@dataclass
class LandingScan:
    """Every entry of a landing folder, each in exactly one list (sorted by name)."""

    new: list[Path] = field(default_factory=list)  # to process tonight (symlinks too: they are rejected)
    processed: list[Path] = field(default_factory=list)  # same checksum already processed
    ignored: list[dict] = field(default_factory=list)  # {file, reason}: not read, by a stated rule
    rejected_before: list[Path] = field(default_factory=list)  # recorded as rejected; bytes in rejected/
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256 of each file hashed

    @property
    def seen(self) -> int:
        return len(self.new) + len(self.processed)


def scan_landing(landing: Path, archive_root: Path) -> LandingScan:
    """Sort every entry of `landing`: new (processed or rejected tonight), already processed, or
    ignored by a rule in IGNORED. An unknown or compressed suffix is new (the reader rejects it with
    the reason); a file rejected on an earlier night is listed as ignored."""
    done, refused = archived_checksums(archive_root), rejected_checksums(archive_root)
    scan = LandingScan()
    for p in sorted(landing.iterdir()):
        rule = next((why for test, why in IGNORED if test(p)), None)
        if rule:
            scan.ignored.append({"file": p.name, "reason": rule})
            continue
        if p.is_symlink() or not p.is_file():
            scan.new.append(p)  # never followed: rejected by the reader, naming the rule
            continue
        sha = scan.checksums[p.name] = sha256_file(p)
        if sha in done:
            scan.processed.append(p)
        elif sha in refused:
            scan.ignored.append({"file": p.name, "reason": "rejected on an earlier night (kept in rejected/)"})
            scan.rejected_before.append(p)
        else:
            scan.new.append(p)
    return scan
