"""SFTP pull: take the complete new files of a remote folder, byte for byte.

A remote file is taken when its name matches the source's pattern and its size and modification time
are the same on two looks `stable_seconds` apart (an integration engine still writing it is left for
the next pull). It is downloaded to a hidden temporary name and renamed only when complete, so nothing
half-fetched is ever read. The server's host key must already be in `known_hosts`: an unknown or
changed key is refused, never accepted.
"""

from __future__ import annotations

import fnmatch
import stat
import time
import uuid
from pathlib import Path

from b12pipeline.pull.config import PullSource
from b12pipeline.pull.errors import HostKeyRefused, SourceUnreachable


def _connect(source: PullSource):
    import paramiko

    client = paramiko.SSHClient()
    known_hosts = Path(str(source.get("known_hosts")))
    if not known_hosts.is_file():
        raise HostKeyRefused(
            source.name, f"known_hosts file {known_hosts} not found (host keys are never auto-accepted)"
        )
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key_file = source.get("key_file")
    try:
        client.connect(
            str(source.get("host")),
            port=int(source.get("port", 22)),
            username=str(source.get("user")),
            password=source.password(),
            key_filename=str(key_file) if key_file else None,
            look_for_keys=False,
            allow_agent=False,
            timeout=30,
            banner_timeout=30,
            auth_timeout=30,
        )
    except paramiko.BadHostKeyException:
        client.close()
        raise HostKeyRefused(source.name, "the server's host key differs from known_hosts; refused") from None
    except paramiko.SSHException as exc:
        client.close()
        if "not found in known_hosts" in str(exc):
            raise HostKeyRefused(source.name, "the server's host key is not in known_hosts; refused") from None
        if isinstance(exc, paramiko.AuthenticationException):
            raise SourceUnreachable(source.name, "authentication failed") from None
        raise SourceUnreachable(source.name, f"SSH connection failed ({type(exc).__name__})") from None
    except OSError as exc:
        client.close()
        raise SourceUnreachable(source.name, f"cannot connect ({exc.strerror or type(exc).__name__})") from None
    return client


def _candidates(sftp, remote_dir: str, pattern: str) -> dict[str, tuple[int, int]]:
    found = {}
    for entry in sftp.listdir_attr(remote_dir):
        if entry.filename.startswith(".") or not stat.S_ISREG(entry.st_mode or 0):
            continue  # hidden names are files being written by convention; links and folders are never taken
        if fnmatch.fnmatch(entry.filename, pattern):
            found[entry.filename] = (entry.st_size, entry.st_mtime)
    return found


def pull_sftp(source: PullSource, target_dir: Path, known_checksums: set[str]) -> list[Path]:
    """Download the complete new files into `target_dir` and return them, sorted by name.

    `known_checksums`: the archive's checksums; a file whose bytes were processed before is removed
    again after download (a remote file renamed or re-dropped is not processed twice)."""
    from b12pipeline.files import sha256_file

    remote_dir = str(source.get("remote_dir")).rstrip("/") or "/"
    pattern = str(source.get("pattern", "*"))
    stable = float(source.get("stable_seconds", 30))
    target_dir.mkdir(parents=True, exist_ok=True)
    client = _connect(source)
    taken: list[Path] = []
    try:
        sftp = client.open_sftp()
        try:
            first = _candidates(sftp, remote_dir, pattern)
            if first and stable > 0:
                time.sleep(stable)
            second = _candidates(sftp, remote_dir, pattern)
            for name in sorted(n for n, seen in first.items() if second.get(n) == seen):
                local = target_dir / name
                tmp = target_dir / f".{name}.{uuid.uuid4().hex}.part"
                try:
                    sftp.get(f"{remote_dir}/{name}", str(tmp))
                    if tmp.stat().st_size != first[name][0]:
                        continue  # changed while downloading: next pull
                    if sha256_file(tmp) not in known_checksums:  # else processed before: not again
                        tmp.replace(local)
                        taken.append(local)
                finally:
                    tmp.unlink(missing_ok=True)
                move_to = source.get("move_to")
                if move_to:
                    _move_remote(sftp, remote_dir, str(move_to), name)
        finally:
            sftp.close()
    except OSError as exc:
        raise SourceUnreachable(source.name, f"SFTP transfer failed ({exc.strerror or type(exc).__name__})") from None
    finally:
        client.close()
    return taken


def _move_remote(sftp, remote_dir: str, move_to: str, name: str) -> None:
    folder = move_to if move_to.startswith("/") else f"{remote_dir}/{move_to}"
    try:
        sftp.stat(folder)
    except OSError:
        sftp.mkdir(folder)
    sftp.posix_rename(f"{remote_dir}/{name}", f"{folder}/{name}")
