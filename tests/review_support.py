"""The review app under test: a copy of a real store, and the real `b12pipeline review` server process."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent / "b12pipeline"
PASSWORD = "correct horse battery"


def copy_store(out: Path, target: Path) -> Path:
    """A private copy of an output root (queues, history, worklog), so actions never touch the shared one."""
    shutil.copytree(out, target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def adduser(out: Path, name: str, role: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN), "review", "adduser", name, "--out", str(out), "--role", role, "--password-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextlib.contextmanager
def review_server(out: Path, log: Path, *args: str):
    """`b12pipeline review --out OUT` on a free loopback port; yields its base URL; stderr goes to `log`."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(BIN), "review", "--out", str(out), "--port", str(port), *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"review server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("review server did not start in 90 s")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
