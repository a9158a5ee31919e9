"""docs/rules.md (from the rule files) and docs/writing-rules.md (from the operator table and the
rule-file schema) are generated; these fail while a committed copy is stale."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from b12pipeline.config import load_site_config
from b12pipeline.engine.conditions import OPERATOR_TABLE, to_condition
from b12pipeline.engine.ruledocs import EXAMPLE_FENCE, condition_lines, render_language_markdown, render_rules_markdown
from b12pipeline.engine.rulefile import CASE_KEY_DOCS, FIELD_DOCS, OPTIONAL_FIELDS, REQUIRED_FIELDS
from b12pipeline.paths import PROJECT_ROOT, rules_dir
from b12pipeline.pipeline import Rules
from b12pipeline.rulecases import run_rule_cases
from b12pipeline.rulelint import facts_schema, lint_rules
from b12pipeline.rulesets import load_ruleset

DOCS = PROJECT_ROOT / "docs" / "rules.md"
LANGUAGE = PROJECT_ROOT / "docs" / "writing-rules.md"


def test_committed_rules_md_is_current():
    generated = render_rules_markdown(load_ruleset())
    assert DOCS.is_file(), "docs/rules.md missing: run `make docs`"
    assert DOCS.read_text(encoding="utf-8") == generated, "docs/rules.md is stale: run `make docs` and commit it"


def test_every_rule_file_has_a_section_and_output_is_deterministic():
    ruleset = load_ruleset()
    first, second = render_rules_markdown(ruleset), render_rules_markdown(ruleset)
    assert first == second
    for rule in ruleset.rules:
        assert f"## {rule.id}: {rule.title}" in first
        for heading in ("### What it checks", "### Condition", "### Message", "### Why", "### Examples"):
            assert heading in first
        assert rule.citations[0] in first


def test_condition_rendering_is_readable_and_honest_about_empty_values():
    cond = {
        "all": [
            {"field": "charge_hcpcs", "eq": "J3420"},
            {"not": {"field": "ingredient", "eq": "cyanocobalamin"}},
            {
                "any": [
                    {"field": "modifiers", "contains_any": ["JW", "JZ"]},
                    {"field": "payer_type", "in": {"config": "ndc_required_payers"}},
                ]
            },
            {"field": "charge_units", "ne": {"field": "expected_units"}},
            {"field": "lot_number", "is_null": True},
        ]
    }
    assert condition_lines(to_condition(cond)) == [
        "- all of:",
        "  - `charge_hcpcs` is `J3420`",
        "  - `ingredient` is not `cyanocobalamin` (or is empty)",
        "  - any of:",
        "    - `modifiers` includes any of [`JW`, `JZ`]",
        "    - `payer_type` is one of site setting `ndc_required_payers`",
        "  - `charge_units` is not the value of `expected_units`",
        "  - `lot_number` is empty",
    ]


def test_committed_writing_rules_md_is_current():
    assert LANGUAGE.is_file(), "docs/writing-rules.md missing: run `make docs`"
    assert LANGUAGE.read_text(encoding="utf-8") == render_language_markdown(), "stale: run `make docs` and commit it"


def test_the_language_page_covers_every_operator_field_and_case_key():
    page = render_language_markdown()
    assert set(FIELD_DOCS) == set(REQUIRED_FIELDS + OPTIONAL_FIELDS)
    for name in [*FIELD_DOCS, *CASE_KEY_DOCS, *(op.name for op in OPERATOR_TABLE)]:
        assert f"| `{name}` |" in page, name
    assert "| `{field: route, ne: IM}` | false | true | false |" in page  # ne is false on an empty value
    assert "| `{not: {field: route, eq: IM}}` | false | true | true |" in page  # not: {eq} is true on it


def test_operator_examples_are_valid_leaves_on_facts_columns():
    columns = set(facts_schema(rules_dir(), load_site_config()).columns)
    for op in OPERATOR_TABLE:
        leaf = yaml.safe_load(op.example)
        to_condition(leaf)
        assert set(leaf) - {"field"} == {op.name} and leaf["field"] in columns, op.example


def test_the_example_rule_loads_lints_and_passes_its_cases(tmp_path: Path):
    page = render_language_markdown()
    example = re.search(re.escape(EXAMPLE_FENCE) + r"\n(.*?)\n```", page, re.S)
    assert example, "the page shows an example rule file"
    rules = tmp_path / "rules"
    shutil.copytree(rules_dir(), rules)
    for existing in (rules / "documentation").glob("DOC-001*.yaml"):
        existing.unlink()
    (rules / "documentation" / "DOC-001.yaml").write_text(example[1] + "\n")
    assert [str(p) for p in lint_rules(rules) if p.file.startswith("documentation/DOC-001")] == []
    loaded = Rules.load(rules)
    (rule,) = loaded.ruleset.by_id("DOC-001")
    assert all(r.ok for r in run_rule_cases(rule, loaded)), run_rule_cases(rule, loaded)
