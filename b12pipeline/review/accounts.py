"""Who may use the review app: the users file, password hashes, roles, and the bind policy.

The users file is JSON, owner-only: {"users": {"NAME": {"role": "coder", "hash": "$argon2id$..."}}}.
Hashes are argon2id (argon2-cffi); the plain password never reaches disk or a log.

Bind policy: on a loopback address the app needs no login (the person at the machine is the OS user,
as for the CLI); any other address needs a users file with at least one user, or a reverse-proxy
header that names the user, explicitly configured. Otherwise the server refuses to start.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from b12pipeline.files import owner_only_written_into_place

ROLES = ("coder", "supervisor")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 10


class AccountError(ValueError):
    """A users file or a user name/password that cannot be used; str() says which and why."""


class BindRefused(RuntimeError):
    """The server would listen beyond this machine with no way to know who is using it."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def is_supervisor(self) -> bool:
        return self.role == "supervisor"


def default_users_file(out: Path) -> Path:
    return Path(out) / "review" / "users.json"


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()  # argon2id with the library's current recommended cost


def load_users(path: Path) -> dict[str, dict]:
    """The users of `path` ({} when the file does not exist)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        users = data["users"]
        if not isinstance(users, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise AccountError(f"{path}: not a users file (expected JSON with a 'users' object)") from None
    for name, entry in users.items():
        if not isinstance(entry, dict) or entry.get("role") not in ROLES or not str(entry.get("hash", "")):
            raise AccountError(f"{path}: user {name!r} needs a role ({' or '.join(ROLES)}) and a hash")
    return users


def add_user(path: Path, name: str, password: str, role: str) -> bool:
    """Add `name` (or replace its password and role); True when the user is new. Owner-only file."""
    if not NAME_PATTERN.match(name):
        raise AccountError("a user name is 1-64 letters, digits, '.', '_', '@' or '-'")
    if role not in ROLES:
        raise AccountError(f"role must be {' or '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password has at least {MIN_PASSWORD} characters")
    users = load_users(path)
    is_new = name not in users
    users[name] = {"role": role, "hash": _hasher().hash(password)}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with owner_only_written_into_place(path) as fh:  # a failed write leaves no copy of the hashes
        fh.write(json.dumps({"users": users}, indent=2, sort_keys=True).encode())
    return is_new


class Authenticator:
    """Checks a name and password against the users file, re-read when it changes on disk."""

    def __init__(self, path: Path):
        self.path = path
        # Verified against when the name is unknown, so a wrong name and a wrong password cost the same.
        self._decoy = _hasher().hash(secrets.token_hex(16))
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, dict] = {}

    def users(self) -> dict[str, dict]:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._users = load_users(self.path) if stamp else {}
            self._stamp = stamp
        return self._users

    def role_of(self, name: str) -> str | None:
        entry = self.users().get(name)
        return entry["role"] if entry else None

    def verify(self, name: str, password: str) -> User | None:
        from argon2.exceptions import InvalidHashError, VerificationError

        entry = self.users().get(name)
        try:
            _hasher().verify(entry["hash"] if entry else self._decoy, password)
        except (VerificationError, InvalidHashError):
            return None
        return User(name, entry["role"]) if entry else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, users_file: Path, proxy_header: str | None) -> str:
    """The login mode for serving on `host`: 'local', 'password' or 'proxy'; BindRefused when none fits.

    A users file wins even on loopback (a site that made accounts wants them used); a configured
    proxy header wins over both (the proxy has already authenticated the person).
    """
    if proxy_header:
        return "proxy"
    if load_users(users_file):
        return "password"
    if is_loopback(host):
        return "local"
    raise BindRefused(
        f"refusing to listen on {host}: beyond this machine the app needs a users file "
        f"({users_file}; add users with `b12pipeline review adduser NAME`) or --proxy-user-header"
    )
