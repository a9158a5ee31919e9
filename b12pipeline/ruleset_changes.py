"""What changes between two rules folders, and the gates a new ruleset passes before it is deployed.

gate_failures   lint clean, every rule's own cases pass, and a rule whose `when`, message or
                severity changed carries a new `version` (same id and version = same decisions)
rule_changes    rules added, removed or changed (by id), each with a readable diff of its YAML,
                and the other versioned files (site.yaml, reference tables) that changed
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from b12pipeline.deployments import RulesetError
from b12pipeline.engine.rulefile import Rule
from b12pipeline.rulesets import versioned_files

DECIDING_FIELDS = ("when", "message", "severity")
MAX_DIFF_LINES = 200  # a reference table rewritten from scratch is summarised, not printed whole


def load_folder(folder: Path | str):
    """The folder's Rules (ruleset, site config, reference) or RulesetError in one line."""
    from b12pipeline.config import ConfigError
    from b12pipeline.engine.rulefile import RuleFileError
    from b12pipeline.pipeline import Rules
    from b12pipeline.reference import ReferenceError

    folder = Path(folder)
    if not folder.is_dir():
        raise RulesetError(f"--rules {folder} is not a folder")
    try:
        return Rules.load(folder)
    except (RuleFileError, ConfigError, ReferenceError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = "the rules folder does not load; `b12pipeline rules lint` lists every problem"
        raise RulesetError(f"{first} ({hint})") from None


def gate_failures(candidate: Path | str, baseline: Path | str | None) -> list[str]:
    """Every reason `candidate` may not be deployed over `baseline` (None: nothing deployed yet)."""
    from b12pipeline.rulecases import run_cases
    from b12pipeline.rulelint import lint_rules

    candidate = Path(candidate)
    loaded = load_folder(candidate)
    failures = [f"lint: {p}" for p in lint_rules(candidate)]
    for res in run_cases(loaded.ruleset.rules, (), loaded):
        if not res.ok:
            failures.append(f"case: {res.rule_id} {res.kind}[{res.index}] {res.detail}: {res.note}".rstrip(": "))
    if baseline is not None:
        failures += [
            f"version: {m}" for m in unbumped_changes(load_folder(baseline).ruleset.rules, loaded.ruleset.rules)
        ]
    return failures


def unbumped_changes(old: tuple[Rule, ...], new: tuple[Rule, ...]) -> list[str]:
    """Rules whose decisions changed under the same (id, version)."""
    before = {(r.id, r.version): r for r in old}
    problems = []
    for rule in sorted(new, key=lambda r: (r.id, r.version)):
        earlier = before.get((rule.id, rule.version))
        if earlier is None:
            continue
        changed = [f for f in DECIDING_FIELDS if getattr(earlier, f) != getattr(rule, f)]
        if changed:
            problems.append(
                f"{rule.id} version {rule.version}: {', '.join(changed)} changed; give the rule a new version"
            )
    return problems


@dataclass
class RuleChange:
    rule_id: str
    change: str  # added | removed | changed
    title: str
    queue: str
    old_versions: list[str] = field(default_factory=list)
    new_versions: list[str] = field(default_factory=list)
    diff: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class FolderChanges:
    rules: list[RuleChange]
    other_files: dict[str, str]  # path relative to the folder -> unified diff (site.yaml, reference tables)

    @property
    def changed_rule_ids(self) -> set[str]:
        return {c.rule_id for c in self.rules}


def _texts(folder: Path | None, paths: list[Path]) -> dict[str, str]:
    if folder is None:
        return {}
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8", errors="replace") for p in paths}


def _unified(old: dict[str, str], new: dict[str, str]) -> str:
    lines: list[str] = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, ""), new.get(name, "")
        if a == b:
            continue
        lines += difflib.unified_diff(
            a.splitlines(),
            b.splitlines(),
            f"active/{name}" if name in old else "/dev/null",
            f"candidate/{name}" if name in new else "/dev/null",
            lineterm="",
            n=2,
        )
    if len(lines) > MAX_DIFF_LINES:
        lines = lines[:MAX_DIFF_LINES] + [f"... {len(lines) - MAX_DIFF_LINES} more diff line(s)"]
    return "\n".join(lines)


def rule_changes(old: Path | str | None, new: Path | str) -> FolderChanges:
    """Compare two rules folders (old None: everything in `new` is added)."""
    new = Path(new)
    old = Path(old) if old is not None else None
    new_rules = load_folder(new).ruleset.rules
    old_rules = load_folder(old).ruleset.rules if old is not None else ()
    by_id: dict[str, tuple[list[Rule], list[Rule]]] = {}
    for r in old_rules:
        by_id.setdefault(r.id, ([], []))[0].append(r)
    for r in new_rules:
        by_id.setdefault(r.id, ([], []))[1].append(r)
    changes = []
    for rule_id, (before, after) in sorted(by_id.items()):
        old_text = _texts(old, [r.path for r in before])
        new_text = _texts(new, [r.path for r in after])
        if old_text == new_text:
            continue
        kind = "added" if not before else "removed" if not after else "changed"
        shown = (after or before)[-1]
        changes.append(
            RuleChange(
                rule_id=rule_id,
                change=kind,
                title=shown.title,
                queue=shown.queue,
                old_versions=sorted(r.version for r in before),
                new_versions=sorted(r.version for r in after),
                diff=_unified(old_text, new_text),
            )
        )
    rule_paths_new = {r.path for r in new_rules}
    rule_paths_old = {r.path for r in old_rules}
    others_old = _texts(old, [p for p in versioned_files(old) if p not in rule_paths_old]) if old else {}
    others_new = _texts(new, [p for p in versioned_files(new) if p not in rule_paths_new])
    other = {
        name: _unified(
            {name: others_old[name]} if name in others_old else {},
            {name: others_new[name]} if name in others_new else {},
        )
        for name in sorted(set(others_old) | set(others_new))
        if others_old.get(name) != others_new.get(name)
    }
    return FolderChanges(rules=changes, other_files=other)
