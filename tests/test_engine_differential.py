"""Differential test: the Polars engine and the durable-rules engine give identical findings.

On the bundled fixtures (every row), on every rule's own cases, through the pipeline's evaluate path,
and on generated conditions that cover the whole condition language (every operator, operand kind,
negation over compound conditions, empty values, effective windows). The rule files are the same for
both engines; only the way hits are decided differs (engine/durable.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from b12pipeline import normalize
from b12pipeline.engine import durable
from b12pipeline.engine.evaluate import evaluate
from b12pipeline.facts import evaluation_facts
from b12pipeline.ingest.read import read_extract
from b12pipeline.pipeline import Rules, apply_staged, stage_file
from b12pipeline.queues import read_queue
from b12pipeline.rulecases import case_defaults, case_facts, facts_by_case
from b12pipeline.validate import validate

pytest.importorskip("durable.engine", reason="durable-rules not installed (pip install '.[durable]')")

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fixtures"
KEY = ["finding_id", "rule_id", "message", "expected", "actual"]


@pytest.fixture(scope="module")
def loaded() -> Rules:
    return Rules.load()


@pytest.fixture(scope="module")
def fixture_facts(loaded: Rules) -> pl.DataFrame:
    frames = []
    for path in sorted(FIXTURES.glob("emar_*")):
        frame = read_extract(path, None).frame
        b12 = frame.filter(frame.select(normalize.b12_scope(loaded.reference).alias("s"))["s"])
        frames.append(validate(b12).valid)
    canonical = pl.concat(frames, how="diagonal_relaxed")
    return evaluation_facts(canonical, loaded.reference, loaded.config, loaded.ruleset.payers)


@pytest.fixture(scope="module")
def case_rows(loaded: Rules) -> dict[str, pl.DataFrame]:
    """Per rule id: the facts of all its cases (versions together)."""
    defaults = case_defaults(loaded.ruleset.directory)
    cases = [(r.id, c) for r in loaded.ruleset.rules for kind in ("fires", "passes") for c in r.cases.get(kind) or []]
    # Derived together, as the case runner derives them (each case's ids its own); alone if they cannot be.
    together = facts_by_case([c for _, c in cases], defaults, loaded)
    out: dict[str, list[pl.DataFrame]] = {}
    for (rule_id, case), facts in zip(cases, together, strict=True):
        if facts is None:
            facts, _ = case_facts(case, defaults, loaded.reference, loaded.config, loaded.ruleset.payers)
        out.setdefault(rule_id, []).append(facts)
    return {rid: pl.concat(f, how="vertical_relaxed") for rid, f in out.items()}


@pytest.fixture(scope="module")
def all_facts(fixture_facts, case_rows) -> pl.DataFrame:
    """Fixture rows plus every case row: the widest set of real value shapes we have."""
    return pl.concat([fixture_facts, *case_rows.values()], how="vertical_relaxed")


def same_findings(facts: pl.DataFrame, loaded: Rules, rules=None) -> tuple[pl.DataFrame, pl.DataFrame]:
    a = evaluate(facts, loaded.ruleset, loaded.config, "diff", rules=rules)
    b = durable.evaluate(facts, loaded.ruleset, loaded.config, "diff", rules=rules)
    assert a.select(KEY).equals(b.select(KEY)), f"engines differ:\npolars:\n{a.select(KEY)}\ndurable:\n{b.select(KEY)}"
    assert a.equals(b)
    return a, b


@pytest.mark.slow  # the fixture extracts read, validated and evaluated by both engines
def test_fixture_rows_same_findings(fixture_facts, loaded):
    a, _ = same_findings(fixture_facts, loaded)
    assert a.height > 0  # the fixtures do produce findings: the comparison is not of two empty frames


@pytest.mark.slow  # every rule's cases through both engines (the module fixture builds them all)
@pytest.mark.parametrize("rule_id", sorted({r.id for r in Rules.load().ruleset.rules}))
def test_rule_cases_same_findings(rule_id, case_rows, loaded):
    rules = list(loaded.ruleset.rules)  # every rule file, retired ones too, on this rule's cases
    a, _ = same_findings(case_rows[rule_id], loaded, rules=rules)
    assert rule_id in set(a["rule_id"]) or all(r.status != "active" for r in loaded.ruleset.by_id(rule_id))


@pytest.mark.slow  # stages and applies the fixtures twice, once per engine
def test_pipeline_engine_parameter_gives_same_queues(tmp_path, loaded):
    """The evaluate path of the pipeline (stage_file -> apply_staged) with engine=durable."""
    queues = {}
    for engine in ("polars", "durable"):
        out = tmp_path / engine
        staged = [
            stage_file(p, out, "run-diff", dt.date(2024, 3, 2), loaded).staged for p in sorted(FIXTURES.glob("emar_*"))
        ]
        applied = apply_staged([s for s in staged if s], out, loaded, "run-diff", engine=engine)
        assert sum(applied["findings_per_queue"].values()) > 0
        queues[engine] = pl.concat(
            [read_queue(out / "queues", q) for q in ("coding", "documentation")], how="vertical_relaxed"
        ).sort("finding_id")
    assert queues["polars"].equals(queues["durable"])


def test_unknown_engine_is_refused():
    from b12pipeline.engine.engines import evaluator

    with pytest.raises(ValueError, match="unknown engine 'drools'"):
        evaluator("drools")


# --- the whole condition language, generated -------------------------------------------------------

PATTERNS = ["^J34", "(?i)cyano", r"\d{3}", "^$", "mcg/mL", "(?i)^(im|sc)$"]
BOOL_COLS = [
    "given",
    "charge_present",
    "has_jw",
    "has_jz",
    "npi_valid",
    "dx_covered",
    "ndc_in_reference",
    "has_charge_hcpcs",
]
NUM_COLS = [
    "dose_value",
    "dose_mcg",
    "charge_units",
    "expected_units",
    "charge_ndc_qty",
    "waste_mcg",
    "concentration",
    "container_ml",
    "dose_ml",
    "days_since_first_injection",
]
STR_COLS = [
    "charge_hcpcs",
    "ingredient",
    "route_class",
    "route",
    "lot_number",
    "payer_type",
    "admin_cpt",
    "ndc_status",
    "container",
    "place_of_service",
    "claim_type",
    "dx_invalid",
    "expected_code",
]
LIST_COLS = ["modifiers", "dx_codes", "em_codes"]
DATE_COLS = ["expiration_date", "service_date"]


def leaves(facts: pl.DataFrame):
    def sample(col):
        values = [v for v in facts[col].unique(maintain_order=True).to_list() if v is not None][:8]
        return st.sampled_from(values or ["none"])

    string = st.sampled_from(STR_COLS).flatmap(
        lambda c: st.one_of(
            st.builds(lambda op, v: {"field": c, op: v}, st.sampled_from(["eq", "ne", "lt", "ge"]), sample(c)),
            st.builds(
                lambda op, vs: {"field": c, op: vs}, st.sampled_from(["in", "not_in"]), st.lists(sample(c), max_size=3)
            ),
            st.builds(lambda p: {"field": c, "matches": p}, st.sampled_from(PATTERNS)),
            st.builds(lambda other: {"field": c, "eq": {"field": other}}, st.sampled_from(STR_COLS)),
        )
    )
    number = st.sampled_from(NUM_COLS).flatmap(
        lambda c: st.one_of(
            st.builds(
                lambda op, v: {"field": c, op: v},
                st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge"]),
                st.one_of(sample(c), st.sampled_from([0, 1, 1.5, 1000, 2000])),
            ),
            st.builds(
                lambda op, other: {"field": c, op: {"field": other}},
                st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge"]),
                st.sampled_from(NUM_COLS),
            ),
            st.builds(lambda op: {"field": c, op: {"config": "loading_phase_days"}}, st.sampled_from(["gt", "le"])),
        )
    )
    boolean = st.builds(lambda c, v: {"field": c, "eq": v}, st.sampled_from(BOOL_COLS), st.booleans())
    null = st.builds(
        lambda c, v: {"field": c, "is_null": v},
        st.sampled_from(STR_COLS + NUM_COLS + BOOL_COLS + LIST_COLS + DATE_COLS),
        st.booleans(),
    )
    lists = st.sampled_from(LIST_COLS).flatmap(
        lambda c: st.one_of(
            st.builds(
                lambda v: {"field": c, "contains": v}, st.sampled_from(["JW", "JZ", "25", "D51.0", "99211", "x"])
            ),
            st.builds(
                lambda vs: {"field": c, "contains_any": vs},
                st.lists(st.sampled_from(["JW", "JZ", "D51.0", "R53.83", "99213"]), max_size=3),
            ),
        )
    )
    config = st.one_of(
        st.just({"field": "payer_type", "in": {"config": "covered_dx_payers"}}),
        st.just({"field": "place_of_service", "not_in": {"config": "facility_pos"}}),
        st.just({"field": "charge_hcpcs", "in": {"config": "unclassified_codes"}}),
        st.just({"field": "given", "eq": {"config": "mod002_institutional"}}),
        st.just({"config": "mod002_institutional"}),  # a true/false setting as the condition itself
        st.just({"field": "days_since_first_injection", "gt": {"config": "loading_phase_days"}}),
    )
    dates = st.one_of(
        st.builds(
            lambda c, op, d: {"field": c, op: d},
            st.sampled_from(DATE_COLS),
            st.sampled_from(["lt", "ge", "eq"]),
            st.dates(dt.date(2023, 1, 1), dt.date(2026, 12, 31)),
        ),
        st.builds(
            lambda op: {"field": "expiration_date", op: {"field": "service_date"}},
            st.sampled_from(["lt", "ge", "eq", "ne"]),
        ),
        st.builds(
            lambda op, d: {"field": "admin_time", op: d},
            st.sampled_from(["lt", "ge"]),
            st.datetimes(dt.datetime(2024, 2, 28), dt.datetime(2024, 3, 3)),
        ),
    )
    return st.one_of(string, number, boolean, null, lists, config, dates)


def conditions(facts: pl.DataFrame):
    return st.recursive(
        leaves(facts),
        lambda inner: st.one_of(
            st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda x: {"not": x}, inner),
        ),
        max_leaves=6,
    )


@pytest.fixture(scope="module")
def template_rule(loaded):
    return loaded.ruleset.rules[0]


@pytest.mark.slow  # 150 generated conditions, each through both engines
def test_generated_conditions_same_findings(all_facts, loaded, template_rule):
    from b12pipeline.engine.conditions import to_condition

    windows = st.sampled_from(
        [
            (None, None),
            (dt.date(2024, 3, 2), None),
            (None, dt.date(2024, 3, 2)),
            (dt.date(2024, 3, 1), dt.date(2024, 3, 2)),
        ]
    )

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(st.tuples(conditions(all_facts), windows), min_size=1, max_size=4))
    def check(specs):
        rules = []
        for i, (cond, (lo, hi)) in enumerate(specs):
            rules.append(
                dataclasses.replace(
                    template_rule, id=f"GEN-{i:03d}", when=to_condition(cond), effective_from=lo, effective_to=hi
                )
            )
        same_findings(all_facts, loaded, rules=rules)

    check()
