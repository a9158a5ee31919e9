"""Pull sources: where a night's extract is fetched from, read strictly from the sources file.

The sources file (`--sources FILE`, or the file `B12_SOURCES_FILE` names) lists each source by name.
It is deliberately not part of the rules folder: `site.yaml` and the rules are hashed into the
ruleset version and deployed through compliance's gates, and a database host or a drop folder is not
a billing rule (docs/decisions.md). More in docs/pull.md:

    sources:
      clarity:
        kind: sql                        # sql | sftp | landing
        url: mssql+pyodbc://svc_b12@clarity-db/Clarity?driver=ODBC+Driver+18+for+SQL+Server
        password_env: B12_CLARITY_PASSWORD   # or password_secret: <Prefect Secret block name>
        query: clarity.sql               # relative to schemas/sources/, or an absolute path
        format: clarity                  # the source mapping the pulled rows are read with
        lookback_days: 2                 # late charting: the window starts this many days before the night

Credentials are never written in the file: a `password`, or a URL carrying one, is refused. The
password is read from the named environment variable or Prefect Secret block when the pull runs,
and is only ever handed to the driver (it is not in any message, log, manifest or report).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import yaml

from b12pipeline.paths import schemas_dir

KINDS = ("sql", "sftp", "landing")
_COMMON = {"kind", "format", "retries", "retry_delay_seconds", "password_env", "password_secret"}
_KEYS = {
    "sql": _COMMON | {"url", "query", "lookback_days", "batch_rows"},
    "sftp": _COMMON
    | {"host", "port", "user", "key_file", "known_hosts", "remote_dir", "pattern", "stable_seconds", "move_to"},
    "landing": _COMMON | {"path"},
}


class SourceConfigError(ValueError):
    """The sources file is malformed; the message names the file, the source and the key."""


@dataclass(frozen=True)
class PullSource:
    name: str
    kind: str
    settings: dict = field(default_factory=dict)

    def get(self, key: str, default=None):
        return self.settings.get(key, default)

    @property
    def format(self) -> str | None:
        """The reader for what this source yields (None: recognised from the file, as in landing)."""
        return self.settings.get("format") or ("clarity" if self.kind == "sql" else None)

    @property
    def retries(self) -> int:
        return int(self.settings.get("retries", 2))

    @property
    def retry_delay_seconds(self) -> list[float]:
        value = self.settings.get("retry_delay_seconds", [10, 60])
        return [float(v) for v in (value if isinstance(value, list) else [value])]

    def password(self) -> str | None:
        """The credential, fetched now from the environment or a Prefect Secret block."""
        env = self.settings.get("password_env")
        if env:
            value = os.environ.get(env)
            if value is None:
                raise SourceConfigError(f"source {self.name}: environment variable {env} (password_env) is not set")
            return value
        block = self.settings.get("password_secret")
        if block:
            from prefect.blocks.system import Secret

            try:
                secret = cast(Secret, Secret.load(block))  # sync call: the block itself, not a coroutine
                return secret.get()
            except ValueError:
                raise SourceConfigError(
                    f"source {self.name}: Prefect Secret block {block!r} (password_secret) not found"
                ) from None
        return None

    def query_path(self, dialect: str | None = None) -> Path:
        """The query file; `<stem>.<dialect>.sql` beside it wins for that database (ordered
        aggregates, for one, are written differently by SQL Server and PostgreSQL)."""
        query = Path(self.settings["query"])
        query = query if query.is_absolute() else schemas_dir() / "sources" / query
        variant = query.with_name(f"{query.stem}.{dialect}{query.suffix}") if dialect else None
        return variant if variant is not None and variant.is_file() else query


def default_sources_file() -> Path | None:
    value = os.environ.get("B12_SOURCES_FILE")
    return Path(value) if value else None


def load_sources(path: Path) -> dict[str, PullSource]:
    path = Path(path)
    if not path.is_file():
        raise SourceConfigError(f"{path}: no such sources file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SourceConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), dict):
        raise SourceConfigError(f"{path}: expected a mapping 'sources: {{<name>: {{kind: ...}}}}'")
    return {str(name): _source(path, str(name), body) for name, body in raw["sources"].items()}


def _source(path: Path, name: str, body) -> PullSource:
    if not isinstance(body, dict):
        raise SourceConfigError(f"{path}: source {name}: expected a mapping of settings")
    kind = body.get("kind")
    if kind not in KINDS:
        raise SourceConfigError(f"{path}: source {name}: kind must be one of {', '.join(KINDS)}")
    if "password" in body:
        raise SourceConfigError(
            f"{path}: source {name}: credentials are never stored in this file; "
            "name an environment variable (password_env) or a Prefect Secret block (password_secret)"
        )
    unknown = sorted(set(body) - _KEYS[kind])
    if unknown:
        raise SourceConfigError(
            f"{path}: source {name}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS[kind]))}"
        )
    required = {"sql": ("url", "query"), "sftp": ("host", "user", "known_hosts", "remote_dir"), "landing": ("path",)}
    missing = [k for k in required[kind] if not body.get(k)]
    if missing:
        raise SourceConfigError(f"{path}: source {name}: missing {', '.join(missing)}")
    if kind == "sql":
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(str(body["url"]))
        except ArgumentError:
            raise SourceConfigError(f"{path}: source {name}: url is not a SQLAlchemy URL") from None
        if url.password is not None:
            raise SourceConfigError(
                f"{path}: source {name}: the url carries a password; remove it and name an environment "
                "variable (password_env) or a Prefect Secret block (password_secret)"
            )
    return PullSource(name=name, kind=kind, settings=dict(body))
