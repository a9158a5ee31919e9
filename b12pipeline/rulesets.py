"""Reading the rules folder: rule files (strict, safe YAML), the ruleset and its content version.

The engine (b12pipeline/engine/rulefile.py) checks a rule file's data; this module reads it from disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

import yaml

from b12pipeline.engine.payers import PAYER_FOLDER, PayerFileError, PayerOverride, overlap_problems, parse_payer
from b12pipeline.engine.rulefile import Problem, Rule, RuleFileError, Ruleset, check_rule, rule_file_error
from b12pipeline.paths import rules_dir

# libyaml's safe loader: the same safe constructors, about 10x faster than the pure-Python parser
# (35 rule files with their cases took 0.5 s, paid by every run before anything else).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictSafeLoader(SAFE_LOADER):  # type: ignore[misc,valid-type]
    """The safe loader that also refuses a key given twice (safe_load silently keeps the last one)."""


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
    """The file's data (strict safe YAML), or RuleFileError naming the file, line and column."""
    data, _ = _read_nodes(path, path.read_text(encoding="utf-8"))
    return data


def _read_nodes(path: Path, text: str) -> tuple[Any, Any]:
    """The file's data and its YAML node tree (to place problems), or RuleFileError."""
    _refuse_aliases(path, text)
    loader = _StrictSafeLoader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    except RecursionError:
        raise RuleFileError(f"{path}: not valid (safe) YAML: nested too deeply") from None
    except yaml.constructor.ConstructorError as exc:
        tag = re.search(r"tag '([^']+)'", str(exc))
        if tag:
            shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise RuleFileError(
                f"{_at(path, exc.problem_mark)}: not valid (safe) YAML: tag {shown} is not allowed: rule files "
                "are plain data (no python/object tags, nothing that runs code)",
                field="yaml",
            ) from None
        raise RuleFileError(f"{_at(path, exc.problem_mark)}: yaml: {exc.problem}", field="yaml") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RuleFileError(f"{_at(path, mark)}: not valid (safe) YAML: {problem}", field="yaml") from None
    except ValueError as exc:  # not UTF-8, or an impossible date like 2024-13-45
        raise RuleFileError(f"{path}: not valid (safe) YAML: {str(exc).splitlines()[0]}", field="yaml") from None
    finally:
        loader.dispose()


def _refuse_aliases(path: Path, text: str) -> None:
    """YAML aliases (`*name`) are refused in rule files: each one reuses a subtree, so a 2 KB file of
    aliases nested in `when:` or `notes:` expands to minutes of work or gigabytes. A rule is written
    out in full; parsing events is cheap (libyaml) and only done when an anchor is defined."""
    if "&" not in text:
        return
    try:
        for event in yaml.parse(text, Loader=SAFE_LOADER):
            if isinstance(event, yaml.AliasEvent):
                raise RuleFileError(
                    f"{_at(path, event.start_mark)}: YAML aliases (*{event.anchor}) are not accepted in rule "
                    "files; write the value out",
                    field="yaml",
                )
    except yaml.YAMLError:
        return  # the loader names the syntax error with its place


def check_rule_file(path: Path) -> tuple[Rule | None, list[Problem]]:
    """The one validator on a file: the Rule, or every problem with its line and column."""
    try:
        data, node = _read_nodes(path, path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        return None, [Problem(str(path), "yaml", f"not valid (safe) YAML: {str(exc).splitlines()[0]}")]
    except RuleFileError as exc:
        return None, [_yaml_problem(path, str(exc))]
    rule, problems = check_rule(data, path)
    return rule, [place(p, node) for p in problems]


def _yaml_problem(path: Path, message: str) -> Problem:
    """A RuleFileError of the YAML reader as a Problem (`path:line:column: text`)."""
    found = re.match(rf"^{re.escape(str(path))}(?::(\d+):(\d+))?: (.*)$", message, re.S)
    if not found:
        return Problem(str(path), "yaml", message)
    line, column, text = found.groups()
    text = text.removeprefix("yaml: ")
    return Problem(str(path), "yaml", text, int(line or 0), int(column or 0))


def place(problem: Problem, node: Any) -> Problem:
    """The problem with the line and column of the deepest part of `problem.at` the file has."""
    mark = None
    for part in problem.at:
        if isinstance(node, yaml.MappingNode):
            found = [v for k, v in node.value if getattr(k, "value", None) == str(part)]
            if not found:
                key_nodes = [k for k, _ in node.value if getattr(k, "value", None) == str(part)]
                mark = key_nodes[0].start_mark if key_nodes else mark
                break
            node = found[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            break
        mark = node.start_mark
    if mark is None:
        return problem
    return dataclasses.replace(problem, line=mark.line + 1, column=mark.column + 1)


def load_rule_file(path: Path) -> Rule:
    """The Rule, or RuleFileError in one line: the first problem, placed, and how many more."""
    rule, problems = check_rule_file(path)
    if rule is None:
        raise rule_file_error(problems)
    return rule


def _at(path: Path, mark) -> str:
    """`path:line:column` (1-based, as editors and compilers count) or just the path."""
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def rule_files(directory: Path) -> list[Path]:
    """Rule files: every *.yaml under rules/ except the site configuration, reference tables and
    payer files (rules/payers/, engine/payers.py)."""
    return sorted(
        p
        for p in directory.rglob("*.yaml")
        if p.name != "site.yaml"
        and not p.name.startswith("_")
        and not {"reference", PAYER_FOLDER} & set(p.relative_to(directory).parts)
    )


def payer_files(directory: Path) -> list[Path]:
    folder = Path(directory) / PAYER_FOLDER
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def load_payers(directory: Path, rule_ids: set[str]) -> tuple[PayerOverride, ...]:
    """Every payer file, checked; the first problem raises PayerFileError (lint lists them all)."""
    payers = []
    for path in payer_files(directory):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, ValueError) as exc:
            raise PayerFileError(f"{path}: not valid (safe) YAML: {str(exc).splitlines()[0]}") from None
        payer = parse_payer(raw, path)
        unknown = sorted(set(payer.rules) - rule_ids)
        if unknown:
            raise PayerFileError(f"{path}: rules: unknown rule id(s) {', '.join(unknown)}")
        payers.append(payer)
    for payer, problem in overlap_problems(payers):
        raise PayerFileError(f"{payer.path}: match: {problem}")
    return tuple(payers)


def versioned_files(directory: Path) -> list[Path]:
    """Everything that decides a finding: rule files, payer files (rules/payers/), reference tables
    (rules/reference/, the CMS tables in rules/reference/cms/ included) and site config; only the raw
    downloads under sources/ are left out (the tables built from them count). The ruleset version
    hashes exactly these and a deployed snapshot (b12pipeline/deployments.py) copies exactly these,
    so the two cannot drift apart."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.suffix in (".yaml", ".csv") and "sources" not in p.relative_to(directory).parts
    )


def ruleset_version(directory: Path) -> str:
    """Content hash of versioned_files(directory): their paths and bytes."""
    digest = hashlib.sha256()
    for p in versioned_files(directory):
        digest.update(p.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(p.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


_LOADED: dict[tuple[Path, str], Ruleset] = {}


def load_ruleset(directory: Path | None = None) -> Ruleset:
    """The ruleset in `directory`, checked. A night loads it in several steps (the CLI's check, the
    flow, each file's task); a folder whose content hash is unchanged is parsed once per process."""
    directory = Path(directory) if directory else rules_dir()
    if not directory.is_dir():
        raise RuleFileError(f"{directory}: rules folder not found")
    key = (directory, ruleset_version(directory))
    if key not in _LOADED:
        _LOADED[key] = _load_ruleset(directory, key[1])
    return _LOADED[key]


def _load_ruleset(directory: Path, version: str) -> Ruleset:
    files = rule_files(directory)
    rules = tuple(load_rule_file(p) for p in files)
    if not rules:
        raise RuleFileError(f"{directory}: no rule files found")
    payers = load_payers(directory, {r.id for r in rules})
    return Ruleset(rules=rules, version=version, directory=directory, files=tuple(files), payers=payers)


def check_conditions_compile(ruleset: Ruleset, config) -> None:
    """Build every rule's Polars expression with the site's settings now, so a rule that cannot be
    compiled stops the run before it reads a file or changes history, naming its file."""
    from b12pipeline.engine.conditions import compile_condition

    for rule in ruleset.rules:
        try:
            compile_condition(rule.when, config.get)
        except Exception as exc:  # KeyError for an unknown setting, polars errors for a bad operand
            raise RuleFileError(
                f"{rule.path}: when: does not compile: {type(exc).__name__} {exc}", field="when"
            ) from None
