"""A real OpenSSH server for tests, on 127.0.0.1, with a temporary host key and user key.

    with SshServer.start() as server:       # sshd -D on 127.0.0.1:<free port>, our own config
        server.root                          # a folder the SFTP user can read and write
        server.key_file, server.known_hosts  # the client's key and a known_hosts naming the host key
        server.user                          # the OS user the tests connect as (the current user)

`SshServer.unavailable()` says why it cannot start here ("" when it can): .ci/run installs Debian's
openssh-server when /usr/sbin/sshd is missing.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SSHD = Path(os.environ.get("B12_SSHD", "/usr/sbin/sshd"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=60)
    return (path.with_suffix(".pub")).read_text().split()[1]


class SshServer:
    def __init__(self, base: Path, port: int):
        self.base, self.port = base, port
        self.root = base / "drop"
        self.key_file = base / "client_ed25519"
        self.known_hosts = base / "known_hosts"
        self.user = getpass.getuser()

    @staticmethod
    def unavailable() -> str:
        if not SSHD.exists():
            return f"OpenSSH server not found ({SSHD}); install Debian's openssh-server (.ci/run does)"
        if shutil.which("ssh-keygen") is None:
            return "ssh-keygen not found"
        try:
            import paramiko  # noqa: F401
        except ImportError:
            return "paramiko is not installed (pip install -e '.[test]')"
        return ""

    def other_host_key_line(self) -> str:
        """A known_hosts line for this address with a different key (an impostor's)."""
        other = self.base / "other_ed25519"
        if not other.exists():
            _keygen(other)
        return f"[127.0.0.1]:{self.port} ssh-ed25519 {other.with_suffix('.pub').read_text().split()[1]}\n"

    @classmethod
    @contextmanager
    def start(cls) -> Iterator["SshServer"]:
        base = Path(tempfile.mkdtemp(prefix="b12-sshd-"))
        server = cls(base, _free_port())
        server.root.mkdir()
        host_pub = _keygen(base / "host_ed25519")
        client_pub = _keygen(server.key_file)
        (base / "authorized_keys").write_text(f"ssh-ed25519 {client_pub} b12-test\n")
        server.known_hosts.write_text(f"[127.0.0.1]:{server.port} ssh-ed25519 {host_pub}\n")
        config = base / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {server.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {base / 'host_ed25519'}",
                    f"PidFile {base / 'sshd.pid'}",
                    f"AuthorizedKeysFile {base / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "UsePAM no",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation folder sshd requires
        proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=open(base / "log", "w")
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"sshd did not start: {(base / 'log').read_text()[-2000:]}") from None
                    time.sleep(0.1)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            shutil.rmtree(base, ignore_errors=True)
