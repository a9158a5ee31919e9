"""Meta-test over every rule file (as semgrep and sqlfluff test their own rules).

Each file: loads, names itself after its id, cites a source, has cases for both outcomes, lints
clean. The folder: (id, version) unique, no two active versions of an id in force on one date.
New rule files are picked up automatically: nothing here lists rules by name.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from b12pipeline.engine.conditions import All, AnyOf, Leaf, Not, SettingIs, to_condition, to_data
from b12pipeline.paths import rules_dir
from b12pipeline.rulelint import lint_rules
from b12pipeline.rulesets import load_rule_file, read_yaml, rule_files

RULES = rules_dir()
FILES = rule_files(RULES)
PROJECT = RULES.parent
# A citation names a primary source (CMS, FDA and drug labels, HHS, a payer or MAC, the code sets, federal rules)
# or a file in this repository; a file it names must exist here (never notes kept elsewhere).
PRIMARY = re.compile(
    r"\b(CMS|Medicare|FDA|HHS|HCPCS|CPT|NCCI|NUCC|LCDs?|ICD-10|CFR|FD&C|NDC|Noridian|Palmetto|CGS|WPS|"
    r"Regence|MSHO|Highmark|Medicaid|MAC|label|prescribing information)\b"
)
NAMED_FILE = re.compile(r"[\w./-]+\.(?:md|csv|yaml|json|txt|sql|py)\b")


def rel(path: Path) -> str:
    return path.relative_to(RULES).as_posix()


@pytest.fixture(scope="module")
def problems():
    return lint_rules(RULES)


def test_there_are_rule_files():
    assert len(FILES) >= 4


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_rule_file(path: Path, problems):
    """The one validator (b12pipeline/rulelint.py: the loader's checks and the folder's) finds nothing."""
    load_rule_file(path)
    mine = [str(p) for p in problems if p.file == rel(path)]
    assert mine == [], "\n".join(mine)


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_citations_name_primary_sources_or_files_here(path: Path):
    for citation in load_rule_file(path).citations:
        named = NAMED_FILE.findall(citation)
        assert PRIMARY.search(citation) or named, f"{rel(path)}: {citation!r} names no primary source"
        # A file here, or a table `b12pipeline reference import` writes into a folder here (CMS quarterly tables).
        missing = [
            f for f in named if not ((PROJECT / f).is_file() or (f.endswith(".csv") and (PROJECT / f).parent.is_dir()))
        ]
        assert missing == [], f"{rel(path)}: {citation!r} names {missing}, not a file of this repository"


def test_citation_check_refuses_a_notes_file_outside_the_repository():
    outside = "research-notes.md section 8: lot number"
    assert NAMED_FILE.findall(outside) == ["research-notes.md"] and not (PROJECT / "research-notes.md").exists()


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_when_is_parsed_once_and_loses_nothing(path: Path):
    """The condition objects give back the file's `when:` exactly, so anything keyed on a rule's
    content (the ruleset version hashes the file bytes; a changed `when` needs a new version) is
    the same before and after parsing."""
    when = load_rule_file(path).when
    assert isinstance(when, (All, AnyOf, Not, Leaf, SettingIs))
    as_json = lambda data: json.dumps(data, sort_keys=True, default=str)  # noqa: E731
    assert as_json(to_data(when)) == as_json(read_yaml(path)["when"])
    assert to_condition(to_data(when)) == when


def test_id_version_pairs_are_unique():
    pairs = Counter((load_rule_file(p).id, load_rule_file(p).version) for p in FILES)
    assert [k for k, n in pairs.items() if n > 1] == []


def test_whole_folder_lints_clean(problems):
    assert [str(p) for p in problems] == []
