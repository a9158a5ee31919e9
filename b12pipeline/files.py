"""Small file operations shared by the night, the archive, reports and history re-runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def temporary_name(target: Path) -> Path:
    """Where a writer puts `target`'s bytes before renaming them into place. Dot-prefixed, so
    readers skip it; unique, so two writers never share one; ending in .tmp, the pattern the next
    run's clean-up removes when a run died mid-write (runguard.clean_stale_temp_files)."""
    return target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"


def write_text_atomic(path: Path, text: str) -> Path:
    """Write text through a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def owner_only_written_into_place(target: Path) -> Iterator[BinaryIO]:
    """A file to write `target`'s bytes into, renamed into place when the block ends and removed if
    it fails (exports and the users file live in folders no later run cleans). Owner-only (0600)
    whatever the umask: what goes through here holds patient identifiers or password hashes."""
    tmp = temporary_name(target)
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
            yield fh
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    """The checksum of an extract: a file's bytes, or for a folder (a FHIR Bulk Data export) the
    names and bytes of its files in name order, so the same export arriving twice is recognised.
    Read in 8 MiB pieces into one buffer: extracts can be gigabytes, and each piece hands Python's
    GIL over twice; while another thread imports GX, each hand-over can wait the GIL's switch
    interval (a 1M-row extract in 1 MiB pieces: 0.85 s instead of 0.2 s)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    buffer = bytearray(8 << 20)
    view = memoryview(buffer)
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb", buffering=0) as fh:
            while read := fh.readinto(buffer):
                digest.update(view[:read])
    return digest.hexdigest()


def extract_checksum(path: Path) -> str:
    """The extract's SHA-256, or "" for a symbolic link or a missing path (never read through a link)."""
    return sha256_file(path) if path.exists() and not path.is_symlink() else ""


def file_state(path: Path) -> list[int]:
    """(size, modification time in ns) of a path, not following a link: equal before and after a
    read means the bytes read are the bytes listed (docs/decisions.md, "When is a landing file complete")."""
    info = os.lstat(path)
    return [info.st_size, info.st_mtime_ns]


def copy_no_follow(source: Path, target: Path) -> None:
    """Copy a regular file's bytes; a symbolic link is refused rather than followed (O_NOFOLLOW).

    The kernel copies (copy_file_range: no trip through Python's buffers, a reflink where the file
    system has them); where it cannot (another file system on an old kernel, some network shares)
    the bytes go through Python in 1 MiB pieces."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
        try:
            while os.copy_file_range(src.fileno(), dst.fileno(), 1 << 30):
                pass
        except (OSError, AttributeError):  # AttributeError: a platform without copy_file_range
            src.seek(0)
            dst.seek(0)
            dst.truncate()
            shutil.copyfileobj(src, dst, 1 << 20)


def link_into_place(source: Path, target: Path) -> None:
    """Put `source`'s file at `target` the way writers put theirs, through a temporary name and a
    rename (a reader sees the old file or the new one): a hard link where the file system has them,
    else a copy. `source` stays as it is."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        try:
            os.link(source, tmp, follow_symlinks=False)
        except OSError:  # no hard links here (some network shares): the bytes are copied
            copy_no_follow(source, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, payload: dict) -> None:
    """Write JSON through a temporary file and a rename: a reader never sees half a file."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
