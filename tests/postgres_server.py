"""A real PostgreSQL server for tests, started from Debian's binaries in a temporary folder.

    with PostgresServer.start() as server:        # initdb + pg_ctl start on 127.0.0.1:<free port>
        url = server.create_database("t1")         # a fresh database -> its SQLAlchemy URL
        ...
        server.drop_database("t1")
                                                    # stopped (pg_ctl stop -m fast) and removed on exit

When the tests run as root, the server runs as the `postgres` user Debian's package creates (initdb
refuses root). `PostgresServer.unavailable()` says why a server cannot start here ("" when it can):
conftest skips PostgreSQL tests with that reason. The driver is psycopg 3 (docs/decisions.md).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PG_BIN = Path(os.environ.get("B12_PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVER_USER = "postgres"  # the OS user the server runs as when we are root
DB_USER = "b12test"  # the database superuser initdb creates


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, root: Path, port: int, run_as: str | None):
        self.root, self.port, self.run_as = root, port, run_as
        self.data = root / "data"
        self.socket_dir = root / "sock"

    @staticmethod
    def unavailable() -> str:
        for tool in ("initdb", "pg_ctl"):
            if not (PG_BIN / tool).exists():
                return f"PostgreSQL binaries not found ({PG_BIN / tool}); install Debian's postgresql (.ci/run does)"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "the psycopg driver is not installed (pip install -e '.[test]')"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                return f"running as root and there is no {SERVER_USER!r} user to run the server as"
        return ""

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def _run(self, *args: str) -> None:
        done = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    @classmethod
    @contextmanager
    def start(cls) -> Iterator["PostgresServer"]:
        root = Path(tempfile.mkdtemp(prefix="b12-pg-"))
        run_as = SERVER_USER if os.geteuid() == 0 else None
        server = cls(root, _free_port(), run_as)
        server.socket_dir.mkdir()
        if run_as:
            user = pwd.getpwnam(run_as)
            for p in (root, server.socket_dir):
                os.chown(p, user.pw_uid, user.pw_gid)
        try:
            server._run(
                str(PG_BIN / "initdb"),
                "-D",
                str(server.data),
                "-U",
                DB_USER,
                "--auth=trust",  # a throwaway server reachable only from this machine
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            )
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={server.port} "
                f"-c unix_socket_directories={server.socket_dir} -c fsync=off -c full_page_writes=off "
                "-c synchronous_commit=off -c max_connections=50 -c shared_buffers=32MB"
            )
            server._run(
                str(PG_BIN / "pg_ctl"), "-D", str(server.data), "-o", options, "-l", str(root / "log"), "-w", "start"
            )
            yield server
        finally:
            if (server.data / "postmaster.pid").exists():
                subprocess.run(
                    server._cmd(str(PG_BIN / "pg_ctl"), "-D", str(server.data), "-m", "fast", "-w", "stop"),
                    capture_output=True,
                    timeout=120,
                )
            shutil.rmtree(root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=DB_USER, dbname="postgres", autocommit=True) as c:
            c.execute(sql)

    def create_database(self, name: str) -> str:
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
