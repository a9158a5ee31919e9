"""One active ruleset per output root: content-addressed snapshots and an atomic pointer.

<out>/rulesets/<ruleset_version>/   a copy of exactly the files the version hashes
                                    (rulesets.versioned_files: rule files, reference tables, site.yaml)
<out>/rulesets/active.json          which snapshot every run on <out> uses, when and by whom it was
                                    deployed, and the version it replaced

A run without --rules uses the active snapshot, so a later night cannot silently re-evaluate its
look-back with other rules than the ones deployed. A run given a folder whose version differs
refuses (RulesetMismatch) and names the deploy command. The first run on an output root with no
pointer deploys the folder it was given (or the shipped rules/) as the initial ruleset.

Writers here are called with the output lock held (runguard.guard_output).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from b12pipeline.files import write_json
from b12pipeline.paths import OutputLayout, rules_dir
from b12pipeline.rulesets import ruleset_version, versioned_files

POINTER = "active.json"


class RulesetError(ValueError):
    """A ruleset cannot be used or deployed; str() is one line naming what and why."""


class RulesetMismatch(RulesetError):
    """A run was given a rules folder other than the one deployed on its output root."""


@dataclass(frozen=True)
class Deployment:
    """The active pointer's content (no patient data: versions, times, a user name)."""

    version: str
    deployed_at: str
    deployed_by: str
    kind: str  # initial | deploy | rollback
    previous_version: str = ""
    run_id: str = ""
    source: str = ""  # the folder it was deployed from

    def to_dict(self) -> dict:
        return asdict(self)


def operator_name() -> str:
    """Who runs the command (recorded with a deployment): the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (some containers)
        return f"uid {os.getuid()}"


def snapshot_dir(out: Path | str, version: str) -> Path:
    return OutputLayout(Path(out)).rulesets / version


def known_versions(out: Path | str) -> list[str]:
    root = OutputLayout(Path(out)).rulesets
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_active(out: Path | str) -> Deployment | None:
    path = OutputLayout(Path(out)).rulesets / POINTER
    if not path.is_file():
        return None
    try:
        return Deployment(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise RulesetError(
            f"{path}: not a ruleset pointer ({exc.__class__.__name__}); restore it or redeploy"
        ) from None


def write_active(out: Path | str, deployment: Deployment) -> None:
    """Switch the pointer atomically: readers see the old or the new record, never half of one."""
    path = OutputLayout(Path(out)).rulesets / POINTER
    write_json(path, deployment.to_dict())


def snapshot(out: Path | str, folder: Path | str) -> str:
    """Copy `folder`'s versioned files to <out>/rulesets/<version>/ (once); return the version.

    Content-addressed: an existing snapshot whose files hash to its name is kept as is."""
    folder = Path(folder)
    version = ruleset_version(folder)
    target = snapshot_dir(out, version)
    if target.is_dir() and ruleset_version(target) == version:
        return version
    building = target.with_name(f".{version}.building")
    shutil.rmtree(building, ignore_errors=True)
    for path in versioned_files(folder):
        dest = building / path.relative_to(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    if ruleset_version(building) != version:  # the folder changed while it was being copied
        shutil.rmtree(building, ignore_errors=True)
        raise RulesetError(f"{folder}: files changed while the ruleset was being snapshotted; try again")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(building, target)
    return version


def requested_folder(rules: Path | str | None) -> Path | None:
    """The folder a run was explicitly given: --rules, else B12_RULES_DIR, else none."""
    if rules:
        return Path(rules)
    env = os.environ.get("B12_RULES_DIR", "").strip()
    return Path(env) if env else None


def check_requested(out: Path | str, rules: Path | str | None) -> Deployment | None:
    """Refuse a requested folder that is not the deployed ruleset. Read-only: safe before the lock."""
    active = read_active(out)
    asked = requested_folder(rules)
    if active is None or asked is None:
        return active
    if not asked.is_dir():
        raise RulesetError(f"--rules {asked} is not a folder")
    given = ruleset_version(asked)
    if given != active.version:
        raise RulesetMismatch(
            f"--rules {asked} is ruleset {given} but {out} runs ruleset {active.version}; "
            f"to change rules run `b12pipeline rules deploy --rules {asked} --out {out}`, or leave out --rules"
        )
    return active


def resolve_rules(out: Path | str, rules: Path | str | None, deployed_at: str, deployed_by: str) -> Path:
    """The rules folder a run on `out` evaluates with: the active snapshot.

    The first run on an output root without a pointer deploys the requested folder (or the shipped
    rules/) as its initial ruleset. Call with the output lock held."""
    active = check_requested(out, rules)
    if active is None:
        folder = requested_folder(rules) or rules_dir()
        if not folder.is_dir():
            raise RulesetError(f"--rules {folder} is not a folder")
        version = snapshot(out, folder)
        write_active(
            out,
            Deployment(
                version=version,
                deployed_at=deployed_at,
                deployed_by=deployed_by,
                kind="initial",
                source=str(folder),
            ),
        )
        return snapshot_dir(out, version)
    path = snapshot_dir(out, active.version)
    if not path.is_dir() or ruleset_version(path) != active.version:
        raise RulesetError(
            f"{path}: the active ruleset's snapshot is missing or altered; "
            f"redeploy it with `b12pipeline rules deploy --rules FOLDER --out {out}`"
        )
    return path
