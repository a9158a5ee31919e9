"""Run a rule's own cases: records that must fire it and near-misses that must not.

A case is the clean record in rules/_case_defaults.yaml with the case's fields changed. Keys
starting with "_" are not columns:
  _note             what the case shows (docs and failure messages)
  _history          earlier administrations of the same patient (lists of field changes), for
                    cross-row rules; they get admin_ids HIST-1, HIST-2, ...
  _absent_columns   columns the extract does not carry at all (CHG-002, ADMIN-001)
  _reference        CMS table rows the case assumes ({asp_crosswalk: [rows], mue_practitioner: [rows]}):
                    they replace that table for the case (the shipped tables hold no crosswalk or
                    MUE rows, see rules/reference/cms/)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml

from b12pipeline.contract import load_contract
from b12pipeline.engine.evaluate import evaluate
from b12pipeline.engine.rulefile import CASE_KEYS, Rule
from b12pipeline.engine.settings import SiteConfig
from b12pipeline.facts import evaluation_facts
from b12pipeline.reference import Reference


@dataclass
class CaseResult:
    rule_id: str
    kind: str  # fires | passes
    index: int
    note: str
    ok: bool
    detail: str = ""


def case_defaults(rules_directory: Path) -> dict:
    return yaml.safe_load((rules_directory / "_case_defaults.yaml").read_text())


def case_frame(records: list[dict], absent: list[str] | None = None) -> pl.DataFrame:
    """Canonical (text) frame of records, shaped exactly as ingest shapes an extract."""
    contract = load_contract()
    unknown = sorted({k for r in records for k in r} - set(contract.names))
    if unknown:
        raise ValueError(f"unknown column(s) in case: {', '.join(unknown)}")
    data = {c: [None if r.get(c) is None else str(r.get(c)) for r in records] for c in contract.names}
    frame = pl.DataFrame(data, schema={c: pl.String for c in contract.names})
    frame = frame.with_columns(
        pl.lit("rule-case").alias("source_file"), pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("source_row")
    )
    for name in contract.presence_tracked:
        frame = frame.with_columns(pl.lit(name not in (absent or [])).alias(f"has_{name}"))
    return frame


def case_facts(
    case: dict, defaults: dict, reference: Reference, config: SiteConfig, payers: tuple = ()
) -> tuple[pl.DataFrame, str]:
    """The facts frame of a case (its history rows first) and the admin_id of the case's own record,
    with the payer files (rules/payers/) applied, so a case can name a payer."""
    bad = [k for k in case if k.startswith("_") and k not in CASE_KEYS]
    if bad:
        raise ValueError(f"unknown case key(s) {', '.join(bad)}")
    record = {**defaults, **{k: v for k, v in case.items() if not k.startswith("_")}}
    history = [{**defaults, "admin_id": f"HIST-{i}", **h} for i, h in enumerate(case.get("_history", []), start=1)]
    frame = case_frame(history + [record], case.get("_absent_columns"))
    if case.get("_reference"):
        reference = with_case_tables(reference, case["_reference"])
    facts = evaluation_facts(frame, reference, config, payers)
    return facts, record["admin_id"]


def run_case(rule: Rule, case: dict, defaults: dict, rules) -> tuple[bool, str]:
    """Does `rule` fire on the case's own record? Returns (fired, reason-if-error)."""
    facts, admin_id = case_facts(case, defaults, rules.reference, rules.config, rules.ruleset.payers)
    found = evaluate(facts, rules.ruleset, rules.config, run_id="rule-case", rules=[rule])
    return bool(found.filter(pl.col("admin_id") == admin_id).height), ""


def run_rule_cases(rule: Rule, rules) -> list[CaseResult]:
    defaults = case_defaults(rules.ruleset.directory)
    results = []
    for kind in ("fires", "passes"):
        for i, case in enumerate(rule.cases.get(kind, []) or [], start=1):
            note = str(case.get("_note", ""))
            try:
                fired, _ = run_case(rule, case, defaults, rules)
            except Exception as exc:  # a broken case is a failed case, with the reason
                results.append(CaseResult(rule.id, kind, i, note, False, f"{type(exc).__name__}: {exc}"))
                continue
            ok = fired if kind == "fires" else not fired
            detail = "" if ok else ("did not fire" if kind == "fires" else "fired")
            results.append(CaseResult(rule.id, kind, i, note, ok, detail))
    return results


def run_payer_cases(payer, rules) -> list[CaseResult]:
    """A payer file's own cases. Each names the rule it checks (`_rule`) and a payer the file
    matches; `fires` cases must fire that rule (with `_severity`, at that severity, and recording
    the file on the finding), `passes` cases must not fire it."""
    defaults = case_defaults(rules.ruleset.directory)
    results = []
    for kind in ("fires", "passes"):
        for i, case in enumerate(payer.cases.get(kind, []) or [], start=1):
            note = str(case.get("_note", ""))
            rule_id = str(case["_rule"])
            label = f"payers/{payer.path.name}: {rule_id}"
            try:
                ok, detail = _payer_case(payer, rule_id, kind, case, defaults, rules)
            except Exception as exc:  # a broken case is a failed case, with the reason
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            results.append(CaseResult(label, kind, i, note, ok, detail))
    return results


def _payer_case(payer, rule_id: str, kind: str, case: dict, defaults: dict, rules) -> tuple[bool, str]:
    selected = [r for r in rules.ruleset.active if r.id == rule_id]
    if not selected:
        return False, f"no active rule {rule_id}"
    record = {k: v for k, v in case.items() if k not in ("_rule", "_severity")}
    facts, admin_id = case_facts(record, defaults, rules.reference, rules.config, rules.ruleset.payers)
    applied = facts.filter(pl.col("admin_id") == admin_id)["payer_override"].to_list()
    if kind == "fires" and applied != [payer.id]:  # a passes case may be a payer or date the file skips
        return False, f"the record falls under {applied[0] or 'no payer file'}, not {payer.id}: name the payer"
    found = evaluate(facts, rules.ruleset, rules.config, run_id="payer-case", rules=selected)
    own = found.filter(pl.col("admin_id") == admin_id)
    if kind == "passes":
        return (own.height == 0, "" if own.height == 0 else "fired")
    if own.height == 0:
        return False, "did not fire"
    wanted = case.get("_severity")
    if wanted and own["severity"].to_list() != [wanted]:
        return False, f"severity {own['severity'].to_list()} instead of {wanted}"
    if wanted and own["payer_override"].to_list() != [payer.id]:
        return False, f"the finding records payer_override {own['payer_override'].to_list()}, not {payer.id}"
    return True, ""


def with_case_tables(reference: Reference, tables: dict) -> Reference:
    """`reference` with the CMS tables a case states (rows as text, version "case")."""
    import dataclasses

    from b12pipeline.cms import TABLES, CmsTable

    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"_reference: unknown table(s) {', '.join(unknown)}; known: {', '.join(TABLES)}")
    cms = dict(reference.cms)
    for name, rows in tables.items():
        frame = pl.DataFrame([{k: None if v is None else str(v) for k, v in r.items()} for r in rows])
        cms[name] = CmsTable(name, frame, "case", "case")
    return dataclasses.replace(reference, cms=cms)
