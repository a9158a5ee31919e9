"""Pull a night's extract from its source into `<out>/incoming/<source>/`, byte for byte.

    fetch(source, out, night)  ->  the new files in incoming/<source>/ (nothing half-fetched)

The files are then processed exactly as a landing folder is (`flows.pull.pull_flow` hands the
incoming folder to the landing flow): staged, validated, applied, archived by checksum; so a pull of
bytes already processed does nothing, and a re-run or backfill replays the archived bytes.

Kinds: `sql` (b12pipeline.pull.sql: the query's rows for the night's window, as one Parquet file),
`sftp` (b12pipeline.pull.sftp: the complete new files of a remote folder) and `landing` (a local or
mounted folder, copied in).
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path

from b12pipeline.pull.config import PullSource, SourceConfigError, default_sources_file, load_sources
from b12pipeline.pull.errors import HostKeyRefused, SourceUnreachable

__all__ = [
    "HostKeyRefused",
    "PullSource",
    "SourceConfigError",
    "SourceUnreachable",
    "default_sources_file",
    "fetch",
    "incoming_dir",
    "load_sources",
    "clear_processed",
]


def incoming_dir(out: Path | str, source: str) -> Path:
    return Path(out) / "incoming" / source


def fetch(source: PullSource, out: Path | str, night: dt.date) -> list[Path]:
    """Fetch the night from `source` into incoming/<source>/ and return what was written there."""
    from b12pipeline.archive import archived_checksums
    from b12pipeline.paths import OutputLayout

    target = incoming_dir(out, source.name)
    target.mkdir(parents=True, exist_ok=True)
    if source.kind == "sql":
        from b12pipeline.pull.sql import pull_sql

        path = target / f"{source.name}_{night.isoformat()}.parquet"
        pull_sql(source, night, path)
        return [path]
    known = archived_checksums(OutputLayout(Path(out)).archive)
    if source.kind == "sftp":
        from b12pipeline.pull.sftp import pull_sftp

        return pull_sftp(source, target, known)
    return _copy_landing(source, target)


def _copy_landing(source: PullSource, target: Path) -> list[Path]:
    folder = Path(str(source.get("path")))
    if not folder.is_dir():
        raise SourceUnreachable(source.name, f"folder {folder} is not reachable")
    copied = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_symlink() or not path.is_file():
            continue
        tmp = target / f".{path.name}.{uuid.uuid4().hex}.part"
        try:
            shutil.copyfile(path, tmp)
            tmp.replace(target / path.name)
        finally:
            tmp.unlink(missing_ok=True)
        copied.append(target / path.name)
    return copied


def clear_processed(out: Path | str, source: str, checksums: dict[str, str]) -> int:
    """Remove incoming files whose bytes are now in the archive (they are kept there, byte for byte).

    `checksums`: file name -> SHA-256 as the landing flow hashed them (the fetch that writes this
    folder ran before it, under the same output lock), so each file is hashed once; a file it did
    not hash is hashed here."""
    from b12pipeline.archive import archived_checksums
    from b12pipeline.files import sha256_file
    from b12pipeline.paths import OutputLayout

    folder = incoming_dir(out, source)
    if not folder.is_dir():
        return 0
    known = archived_checksums(OutputLayout(Path(out)).archive)
    removed = 0
    for path in folder.iterdir():
        if not path.is_file() or path.name.startswith("."):
            continue
        if (checksums.get(path.name) or sha256_file(path)) in known:
            path.unlink()
            removed += 1
    return removed
