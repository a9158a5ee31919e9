"""Guarding an output root for one run: one run at a time, owner-only files, no stale temp files.

`guard_output(out)` is entered at the CLI/flow boundary and held for the whole run:

- an exclusive `fcntl.flock` on `<out>/.lock`. A second run on the same root stops at once with
  `OutputLocked` naming the holder (pid, host, command, run id), or waits for it with `wait=True`.
  The kernel drops the lock when the holder exits, however it exits (even SIGKILL), so a stale
  `.lock` file is harmless and never needs deleting. flock is not reliable on every network file
  system: keep `--out` on a local disk or one that honours it.
- the process umask is 0o077 (override with B12_UMASK, e.g. 027 to give a group read access), so
  every folder and file the run creates is owner-only (0700 / 0600). Set once here instead of a
  chmod in each writer, so writers added later are covered too.
- dot-prefixed `*.tmp` files under the root are left-overs of a run that died mid-write (every
  writer takes its name from files.temporary_name and renames it into place; readers skip dot
  files). Holding the lock, nothing else is writing, so they are removed, with the staging area of earlier runs.

Re-entrant within a process: the CLI takes the guard before starting Prefect (fast refusal), and
the flow takes it again (covering runs started without the CLI); the inner entry is a no-op.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import stat
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from b12pipeline.paths import OutputLayout

LOCK_NAME = ".lock"
DEFAULT_UMASK = 0o077
_held: dict[Path, "_Hold"] = {}
_held_guard = threading.Lock()


class OutputLocked(RuntimeError):
    """Another run holds the output root. str() names the holder."""


class _Hold:
    def __init__(self, fd: int):
        self.fd = fd
        self.depth = 0
        self.info: dict = {}


def run_umask() -> int:
    text = os.environ.get("B12_UMASK", "").strip()
    if not text:
        return DEFAULT_UMASK
    try:
        value = int(text, 8)
    except ValueError:
        raise ValueError(f"B12_UMASK={text!r} is not an octal umask (e.g. 077 or 027)") from None
    if not 0 <= value <= 0o777:
        raise ValueError(f"B12_UMASK={text!r} is not an octal umask (e.g. 077 or 027)")
    return value


def restrict(path: Path) -> None:
    """Apply the run's umask to a file that kept another mode (shutil.copy2/move copy the source's).
    A symbolic link is left alone: chmod would change its target, which may be outside --out."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return
    path.chmod(stat.S_IMODE(info.st_mode) & ~run_umask())


def holder_of(out: Path) -> str:
    """Who holds the lock on `out`, as recorded in the lock file (best effort)."""
    try:
        info = json.loads((Path(out) / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return "another process (no details recorded)"
    parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
    if info.get("run_id"):
        parts.append(f"run {info['run_id']}")
    if info.get("command"):
        parts.append(f"command {info['command']!r}")
    if info.get("since"):
        parts.append(f"since {info['since']}")
    return ", ".join(parts)


def _write_info(hold: _Hold) -> None:
    data = (json.dumps(hold.info, sort_keys=True) + "\n").encode()
    os.ftruncate(hold.fd, 0)
    os.pwrite(hold.fd, data, 0)


def note_run(out: Path | str, run_id: str) -> None:
    """Record the run id in the lock file once it is known (for the message a second run gets)."""
    hold = _held.get(Path(out).resolve())
    if hold is not None:
        hold.info["run_id"] = run_id
        _write_info(hold)


def clean_stale_temp_files(out: Path) -> list[Path]:
    """Remove what an interrupted run left: dot-prefixed *.tmp files and old staging folders."""
    removed = []
    for tmp in out.rglob(".*.tmp"):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    staging = OutputLayout(out).staging
    if staging.is_dir():
        for run_dir in staging.iterdir():
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir)
    return removed


@contextmanager
def guard_output(out: Path | str, wait: bool = False, on_wait=None) -> Iterator[Path]:
    """Hold `out` for one run (see the module doc). `on_wait(holder)` is called once before waiting."""
    out = Path(out)
    previous = os.umask(run_umask())
    try:
        out.mkdir(parents=True, exist_ok=True)
        key = out.resolve()
        with _held_guard:
            hold = _held.get(key)
            if hold is not None:
                hold.depth += 1
        if hold is None:
            hold = _acquire(key, wait, on_wait)
            hold.depth = 1
            with _held_guard:
                _held[key] = hold
            clean_stale_temp_files(key)
        try:
            yield out
        finally:
            with _held_guard:
                hold.depth -= 1
                last = hold.depth == 0
                if last:
                    _held.pop(key, None)
            if last:
                os.close(hold.fd)  # closing the descriptor releases the flock
    finally:
        os.umask(previous)


def _acquire(out: Path, wait: bool, on_wait) -> _Hold:
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_of(out)
            if not wait:
                raise OutputLocked(
                    f"{out} is in use by another b12pipeline run ({holder}); wait for it to finish, or pass --wait"
                ) from None
            if on_wait:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    hold = _Hold(fd)
    hold.info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv[:2])),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_info(hold)
    return hold
