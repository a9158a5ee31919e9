"""Reading the rules folder: rule files (strict, safe YAML), the ruleset and its content version.

The engine (b12pipeline/engine/rulefile.py) checks a rule file's data; this module reads it from disk.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import yaml

from b12pipeline.engine.rulefile import Rule, RuleFileError, Ruleset, parse_rule
from b12pipeline.paths import rules_dir


class _StrictSafeLoader(yaml.SafeLoader):
    """safe_load that also refuses a key given twice (safe_load silently keeps the last one)."""


def _mapping_no_duplicates(loader: _StrictSafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_no_duplicates)


def read_yaml(path: Path) -> Any:
    """The file's data, or RuleFileError with a message a rule author can act on."""
    text = path.read_text(encoding="utf-8")
    try:
        return yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as exc:
        tag = re.search(r"tag '([^']+)'", str(exc))
        where = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark else ""
        if tag:
            shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise RuleFileError(
                f"YAML tag {shown} is not allowed{where}: rule files are plain data "
                "(safe YAML: no python/object tags, nothing that runs code)"
            ) from None
        raise RuleFileError(f"{exc.problem}{where}") from None
    except yaml.YAMLError as exc:
        raise RuleFileError(f"not valid YAML: {' '.join(str(exc).split())}") from None


def load_rule_file(path: Path) -> Rule:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: not UTF-8, or an impossible date like 2024-13-45
        raise RuleFileError(f"{path}: not valid (safe) YAML: {str(exc).splitlines()[0]}") from None
    return parse_rule(raw, path)


def rule_files(directory: Path) -> list[Path]:
    """Rule files: every *.yaml under rules/ except the site configuration and reference tables."""
    return sorted(
        p
        for p in directory.rglob("*.yaml")
        if p.name != "site.yaml" and not p.name.startswith("_") and "reference" not in p.relative_to(directory).parts
    )


def ruleset_version(directory: Path) -> str:
    """Content hash of everything that decides a finding: rule files, reference tables, site config."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix in (".yaml", ".csv") and "sources" not in p.parts
    )
    for p in files:
        digest.update(p.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(p.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def load_ruleset(directory: Path | None = None) -> Ruleset:
    directory = Path(directory) if directory else rules_dir()
    if not directory.is_dir():
        raise RuleFileError(f"{directory}: rules folder not found")
    files = rule_files(directory)
    rules = tuple(load_rule_file(p) for p in files)
    if not rules:
        raise RuleFileError(f"{directory}: no rule files found")
    return Ruleset(rules=rules, version=ruleset_version(directory), directory=directory, files=tuple(files))
