"""docs/rules.md is generated from the rule files; this fails while the committed copy is stale."""

from __future__ import annotations

from b12pipeline.engine.ruledocs import condition_lines, render_rules_markdown
from b12pipeline.paths import PROJECT_ROOT
from b12pipeline.rulesets import load_ruleset

DOCS = PROJECT_ROOT / "docs" / "rules.md"


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
    assert condition_lines(cond) == [
        "- all of:",
        "  - `charge_hcpcs` is `J3420`",
        "  - `ingredient` is not `cyanocobalamin` (or is empty)",
        "  - any of:",
        "    - `modifiers` includes any of [`JW`, `JZ`]",
        "    - `payer_type` is one of site setting `ndc_required_payers`",
        "  - `charge_units` is not the value of `expected_units`",
        "  - `lot_number` is empty",
    ]
