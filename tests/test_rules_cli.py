"""`b12pipeline rules list | test | lint | docs` through Typer's CliRunner, on the real rules folder
and on broken copies of it (each problem must be reported, naming its file)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from rules_support import FEW
from rules_support import rules_copy as copy_rules
from typer.testing import CliRunner

from b12pipeline.cli import app
from b12pipeline.paths import PROJECT_ROOT, rules_dir
from b12pipeline.rulelint import lint_rules
from b12pipeline.rulesets import load_ruleset

runner = CliRunner()
DOC001 = (rules_dir() / "documentation" / "DOC-001.yaml").read_text()


def invoke(*args: str):
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture
def rules_copy(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(rules_dir(), target)
    return target


def test_list_shows_every_rule_file():
    result = invoke("rules", "list")
    assert result.exit_code == 0, result.output
    for rule in load_ruleset().rules:
        assert rule.id in result.output
    for heading in ("id", "version", "status", "queue", "severity", "effective", "title"):
        assert heading in result.output


def test_test_runs_every_case_and_passes(tmp_path: Path):
    """Every case of the folder given, rules' and payer files' (the whole catalog: test_rule_cases.py)."""
    folder = copy_rules(tmp_path / "rules", only=FEW)
    result = invoke("rules", "test", "--rules", str(folder))
    ruleset = load_ruleset(folder)
    total = sum(len(r.cases.get("fires") or []) + len(r.cases.get("passes") or []) for r in ruleset.rules)
    total += sum(len(p.cases.get("fires") or []) + len(p.cases.get("passes") or []) for p in ruleset.payers)
    assert result.exit_code == 0, result.output
    assert f"{total} of {total} case(s) passed" in result.output


def test_test_of_one_rule_runs_its_cases_and_the_payer_cases_naming_it():
    result = invoke("rules", "test", "--id", "FREQ-001")
    ruleset = load_ruleset(rules_dir())
    (rule,) = [r for r in ruleset.rules if r.id == "FREQ-001"]
    total = len(rule.cases.get("fires") or []) + len(rule.cases.get("passes") or [])
    payer_cases = [c for p in ruleset.payers for k in ("fires", "passes") for c in p.cases.get(k) or []]
    naming = sum(1 for c in payer_cases if str(c["_rule"]) == "FREQ-001")
    assert naming and naming < len(payer_cases)  # some payer cases are FREQ-001's, some are not
    assert result.exit_code == 0, result.output
    assert f"{total + naming} of {total + naming} case(s) passed" in result.output


def test_test_reports_a_failing_case_and_exits_1(tmp_path: Path):
    # a "passes" case that in fact fires: the lot is missing on a given IM injection
    broken = DOC001.replace('- {_note: "lot documented"}', '- {_note: "lot documented", lot_number: null}')
    assert broken != DOC001
    folder = copy_rules(tmp_path / "rules", only=FEW)
    (folder / "documentation" / "DOC-001.yaml").write_text(broken)
    result = invoke("rules", "test", "--rules", str(folder))
    assert result.exit_code == 1
    assert "DOC-001" in result.output and "passes[1]" in result.output and "fired" in result.output


def test_lint_clean_on_the_project_rules():
    result = invoke("rules", "lint")
    assert result.exit_code == 0, result.output
    assert "clean" in result.output


def test_lint_reports_every_broken_file_by_name(rules_copy: Path, tmp_path: Path):
    docs = rules_copy / "documentation"
    (docs / "DOC-101.yaml").write_text(DOC001.replace("id: DOC-001", "id: DOC-101") + "colour: red\n")
    (docs / "DOC-102.yaml").write_text(
        DOC001.replace("id: DOC-001", "id: DOC-102").replace(
            "{field: lot_number, is_null: true}", "{field: lot_number, equals: x}"
        )
    )
    marker = tmp_path / "pwned"
    (docs / "DOC-103.yaml").write_text(f'!!python/object/apply:os.system ["touch {marker}"]\n')
    (docs / "DOC-001.v2.yaml").write_text(
        DOC001.replace('version: "1"', 'version: "2"').replace(
            "status: active", "status: active\neffective_from: 2024-01-01"
        )
    )
    result = invoke("rules", "lint", "--rules", str(rules_copy))
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    # Each problem names its file, line and column (as compilers print) and its field.
    assert re.search(r"documentation/DOC-101\.yaml:\d+:\d+: colour: unknown field", out), out
    assert re.search(r"documentation/DOC-102\.yaml:\d+:\d+: when\.all\[2\]: unknown operator 'equals'", out), out
    assert re.search(
        r"documentation/DOC-103\.yaml:1:1: yaml: not valid \(safe\) YAML: "
        r"tag !!python/object/apply:os.system is not allowed",
        out,
    ), out
    assert "documentation/DOC-001.v2.yaml: effective_from:" in out and "overlaps documentation/DOC-001.yaml" in out
    assert not marker.exists(), "the YAML tag must never run"
    assert "4 problem(s) in 4 file(s)" in out


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda t: t.replace("{field: lot_number, is_null: true}", "{field: lot_no, is_null: true}"),
            "when.all[2]: field 'lot_no' is not a facts column",
        ),
        (
            lambda t: t.replace("{field: route_class, eq: injectable}", "{field: payer_type, in: {config: payers}}"),
            "when.all[1]: in: {config: payers} is not a site setting",
        ),
        (
            lambda t: t.replace('message: "Lot number not documented', 'message: "{lot} not documented'),
            "message: template names {lot}, which is not a facts column",
        ),
        (
            lambda t: t.replace('message: "Lot number not documented', 'message: "{config.lot} not documented'),
            "message: template names {config.lot}, which is not a site setting",
        ),
        (
            lambda t: t.replace("{field: route_class, eq: injectable}", "{config: jwjz_payers}"),
            "when.all[1]: {config: jwjz_payers} as a condition needs a true/false setting",
        ),
        (
            lambda t: t.replace("{field: lot_number, is_null: true}", "{field: lot_number, gt: 3}"),
            "when: does not evaluate on the facts columns",
        ),
        (
            lambda t: re.sub(r"citations:\n(  - .*\n)+", "citations: []\n", t),
            "citations: required field is missing or empty",
        ),
        (lambda t: t.split("  passes:")[0], "cases.passes: needs at least one case"),
        (lambda t: t.replace("id: DOC-001", "id: DOC-009"), "id: file name must be DOC-009.yaml or DOC-009.v<N>.yaml"),
        (lambda t: t.replace("id: DOC-001", "id: doc-1"), "id: 'doc-1' is not an id like CODE-001"),
        (
            lambda t: re.sub(r"citations:\n(  - .*\n)+", 'citations: ["CMS"]\n', t),
            "citations: cite a source (what it is and where), not a word",
        ),
        (
            lambda t: t.replace("queue: documentation", "queue: coding"),
            "queue: file is in documentation/ but its queue is coding",
        ),
        (lambda t: t + "title: again\n", "yaml: key 'title' appears twice"),
        (lambda t: t.replace("status: active", "status: paused"), "status: 'paused' is not one of active, retired"),
        (
            lambda t: t.replace('{_note: "lot documented"}', '{_note: "lot documented", lot: x}'),
            "cases.passes[1]: unknown key(s) lot",
        ),
    ],
)
def test_lint_problem_names_file_and_field(rules_copy: Path, edit, expected):
    path = rules_copy / "documentation" / "DOC-001.yaml"
    changed = edit(DOC001)
    assert changed != DOC001
    path.write_text(changed)
    problems = [p for p in lint_rules(rules_copy) if p.file == "documentation/DOC-001.yaml"]
    assert any(expected in f"{p.field}: {p.message}" for p in problems), [str(p) for p in problems]
    assert all(p.line > 0 for p in problems), [str(p) for p in problems]  # each placed in the file


def test_retired_version_keeps_its_id_and_is_still_linted(rules_copy: Path):
    docs = rules_copy / "documentation"
    (docs / "DOC-001.yaml").write_text(DOC001.replace("status: active", "status: retired"))
    (docs / "DOC-001.v2.yaml").write_text(DOC001.replace('version: "1"', 'version: "2"'))
    assert lint_rules(rules_copy) == []  # retired v1 and active v2 may cover the same dates
    listed = invoke("rules", "list", "--rules", str(rules_copy))
    assert listed.exit_code == 0 and "retired" in listed.output
    (docs / "DOC-001.yaml").write_text(DOC001.replace("status: active", "status: retired") + "colour: red\n")
    assert [p.field for p in lint_rules(rules_copy)] == ["colour"]


def test_loader_errors_are_usage_errors_for_list(rules_copy: Path):
    (rules_copy / "documentation" / "DOC-001.yaml").write_text(DOC001 + "colour: red\n")
    result = invoke("rules", "list", "--rules", str(rules_copy))
    assert result.exit_code == 2
    assert "DOC-001.yaml" in result.output and "colour: unknown field" in result.output


def test_docs_writes_checks_and_detects_stale(tmp_path: Path, rules_copy: Path):
    out = tmp_path / "rules.md"
    assert invoke("rules", "docs", "--out", str(out)).exit_code == 0
    assert out.read_text() == (PROJECT_ROOT / "docs" / "rules.md").read_text()
    assert invoke("rules", "docs", "--check", "--out", str(out)).exit_code == 0
    assert invoke("rules", "docs", "--check").exit_code == 0  # the committed docs/rules.md
    (rules_copy / "documentation" / "DOC-001.yaml").write_text(DOC001.replace("Lot number missing", "Lot missing"))
    stale = invoke("rules", "docs", "--check", "--rules", str(rules_copy), "--out", str(out))
    assert stale.exit_code == 1 and "stale" in stale.output


def test_missing_rules_folder_is_a_usage_error(tmp_path: Path):
    for command in ("list", "test", "lint", "docs"):
        result = invoke("rules", command, "--rules", str(tmp_path / "nope"))
        assert result.exit_code == 2, command


def test_run_refuses_an_unknown_engine(tmp_path: Path):
    extract = PROJECT_ROOT / "data" / "fixtures" / "emar_2024-03-01.csv"
    result = invoke(
        "run", "--extract", str(extract), "--out", str(tmp_path), "--night", "2024-03-01", "--engine", "drools"
    )
    assert result.exit_code == 2
    assert "unknown engine 'drools'" in result.output
    assert not (tmp_path / "queues").exists()


def test_durable_engine_without_the_package_names_the_install(tmp_path: Path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "durable", None)  # as if durable-rules were not installed
    monkeypatch.setitem(sys.modules, "durable.engine", None)
    extract = PROJECT_ROOT / "data" / "fixtures" / "emar_2024-03-01.csv"
    result = invoke(
        "run", "--extract", str(extract), "--out", str(tmp_path), "--night", "2024-03-01", "--engine", "durable"
    )
    assert result.exit_code == 2
    assert "pip install '.[durable]'" in " ".join(result.output.split())


def test_the_loader_and_lint_report_the_same_problems_of_a_file(tmp_path: Path):
    """One validator: lint lists every problem of a file with its line, and the loader refuses the
    same file in one line naming the first of them and how many more there are."""
    from b12pipeline.engine.rulefile import RuleFileError
    from b12pipeline.rulesets import check_rule_file, load_rule_file

    path = tmp_path / "DOC-001.yaml"
    broken = (
        DOC001.replace("severity: warning", "severity: loud")
        .replace("{field: lot_number, is_null: true}", "{field: lot_number, equals: x}")
        .replace('message: "Lot number', 'message: "{config.nope} Lot number')
    )
    path.write_text(broken)
    rule, problems = check_rule_file(path)
    assert rule is None
    lines = broken.splitlines()
    placed = {p.field: lines[p.line - 1] for p in problems}
    assert set(placed) == {"severity", "message", "when.all[2]"}, [str(p) for p in problems]
    assert placed["severity"].startswith("severity:") and placed["message"].startswith("message:")
    assert "equals" in placed["when.all[2]"]
    with pytest.raises(RuleFileError) as caught:
        load_rule_file(path)
    first = min(problems, key=lambda p: p.sort_key)
    assert str(caught.value) == f"{first} (and 2 more problem(s))"
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"{path}:{first.line}:")
