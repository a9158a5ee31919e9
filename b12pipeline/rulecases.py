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

All cases run together (run_cases): one facts frame per distinct `_reference` and
`_absent_columns`, each case's ids prefixed with its own number so that no cross-row fact, MUE day
total or payer fact joins two cases, each verdict read from the case's own record. Deriving facts
once instead of once per case takes `rules test` and the deploy gates from seconds to under one;
the verdicts are those of running each case alone (tests/test_rule_cases_batched.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml

from b12pipeline.contract import load_contract
from b12pipeline.engine.evaluate import empty_findings, evaluate
from b12pipeline.engine.payers import PayerOverride
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
    records = case_records(case, defaults)
    frame = case_frame(records, case.get("_absent_columns"))
    if case.get("_reference"):
        reference = with_case_tables(reference, case["_reference"])
    facts = evaluation_facts(frame, reference, config, payers)
    return facts, records[-1]["admin_id"]


def case_records(case: dict, defaults: dict) -> list[dict]:
    """The records of a case: its history rows, then its own record (last)."""
    bad = [k for k in case if k.startswith("_") and k not in CASE_KEYS]
    if bad:
        raise ValueError(f"unknown case key(s) {', '.join(bad)}")
    record = {**defaults, **{k: v for k, v in case.items() if not k.startswith("_")}}
    history = [{**defaults, "admin_id": f"HIST-{i}", **h} for i, h in enumerate(case.get("_history", []), start=1)]
    return history + [record]


# The columns a fact or rule groups, orders or matches rows by (cross-row facts and MUE day totals
# by patient_id; DUP-001 and the MUE last line order by admin_id; a case's verdict reads its own
# admin_id). Cases evaluated together get these made unique per case, so no case sees another's rows.
CASE_ID_COLUMNS = ("patient_id", "encounter_id", "order_id", "admin_id")


@dataclass
class _Case:
    """One case waiting for its verdict: a rule's own case (payer None) or a payer file's case."""

    label: str
    kind: str
    index: int
    note: str
    case: dict
    rules: list[Rule]  # the rules evaluated on it (a payer case: the active rules of its `_rule`)
    payer: PayerOverride | None = None


def run_cases(rules_to_test, payers_to_test, rules) -> list[CaseResult]:
    """The cases of `rules_to_test` (each rule's, in order), then those of `payers_to_test` (each
    payer file's), evaluated together: every case's rows in one facts frame per (`_reference`,
    `_absent_columns`), its ids (CASE_ID_COLUMNS) prefixed with its own number so cases cannot meet,
    and each verdict read from the findings of the case's own record. The results are those of
    running each case alone (a case the frame cannot take is run alone)."""
    defaults = case_defaults(rules.ruleset.directory)
    cases: list[_Case] = []
    for rule in rules_to_test:
        for kind in ("fires", "passes"):
            for i, case in enumerate(rule.cases.get(kind, []) or [], start=1):
                cases.append(_Case(rule.id, kind, i, str(case.get("_note", "")), case, [rule]))
    for payer in payers_to_test:
        for kind in ("fires", "passes"):
            for i, case in enumerate(payer.cases.get(kind, []) or [], start=1):
                rule_id = str(case["_rule"])
                selected = [r for r in rules.ruleset.active if r.id == rule_id]
                label = f"payers/{payer.path.name}: {rule_id}"
                cases.append(_Case(label, kind, i, str(case.get("_note", "")), case, selected, payer))
    # No active rule (or several of one id) for a payer case: the case alone says so.
    shareable = {n: _own_case(c) for n, c in enumerate(cases) if c.payer is None or len(c.rules) == 1}
    verdicts: dict[int, tuple[bool, str]] = {}
    for members in _groups(shareable, defaults).values():
        verdicts.update(_group_verdicts([cases[n] for n, _, _ in members], members, rules))
    results = []
    for n, c in enumerate(cases):
        ok, detail = verdicts[n] if n in verdicts else _alone(c, defaults, rules)
        results.append(CaseResult(c.label, c.kind, c.index, c.note, ok, detail))
    return results


def run_rule_cases(rule: Rule, rules) -> list[CaseResult]:
    return run_cases([rule], [], rules)


def run_payer_cases(payer, rules) -> list[CaseResult]:
    """A payer file's own cases. Each names the rule it checks (`_rule`) and a payer the file
    matches; `fires` cases must fire that rule (with `_severity`, at that severity, and recording
    the file on the finding), `passes` cases must not fire it."""
    return run_cases([], [payer], rules)


def _own_case(c: _Case) -> dict:
    """The case as rows are built from it (a payer case's `_rule` and `_severity` are not rows)."""
    return c.case if c.payer is None else {k: v for k, v in c.case.items() if k not in ("_rule", "_severity")}


def _case_rows(case: dict, defaults: dict, prefix: str) -> tuple[pl.DataFrame | None, str]:
    """The case's rows as case_facts builds them, with `prefix` before every id (CASE_ID_COLUMNS),
    and its own record's (prefixed) admin_id; (None, "") when an id is empty, since an empty id
    cannot be made the case's own, or its admin_id is not text (such a case runs alone)."""
    records = case_records(case, defaults)
    frame = case_frame(records, case.get("_absent_columns"))
    ids = frame.select(CASE_ID_COLUMNS)
    if not isinstance(records[-1]["admin_id"], str) or any(
        v is None or not v.strip() for c in ids.iter_columns() for v in c
    ):
        return None, ""  # a number as admin_id is matched as a number by the case alone
    frame = frame.with_columns((pl.lit(prefix) + pl.col(c)).alias(c) for c in CASE_ID_COLUMNS)
    return frame, prefix + str(records[-1]["admin_id"])


def _groups(cases: dict[int, dict], defaults: dict) -> dict[tuple, list[tuple[int, pl.DataFrame, str]]]:
    """The cases (by number) that can share a facts frame, grouped by the frame they share (same
    `_reference` and `_absent_columns`): (number, its rows with prefixed ids, its own admin_id)."""
    groups: dict[tuple, list[tuple[int, pl.DataFrame, str]]] = {}
    for n, case in cases.items():
        try:
            frame, own = _case_rows(case, defaults, f"{n}:")
        except Exception:  # the case alone reports the reason
            continue
        if frame is not None:
            key = (repr(case.get("_reference") or None), repr(case.get("_absent_columns")))
            groups.setdefault(key, []).append((n, frame, own))
    return groups


def _shared_facts(case: dict, members: list[tuple[int, pl.DataFrame, str]], rules) -> pl.DataFrame:
    """The facts of a group's rows, under the CMS tables its cases (`case` one of them) state."""
    reference = rules.reference
    if case.get("_reference"):
        reference = with_case_tables(reference, case["_reference"])
    frame = pl.concat([f for _, f, _ in members], how="vertical")
    return evaluation_facts(frame, reference, rules.config, rules.ruleset.payers)


def facts_by_case(cases: list[dict], defaults: dict, rules) -> list[pl.DataFrame | None]:
    """Per case, its facts rows (history first, its own record last) derived together as run_cases
    derives them, ids prefixed with the case's number; None for a case that cannot share a frame
    (an empty or non-text id, a broken case, a failing group): case_facts derives it alone."""
    out: list[pl.DataFrame | None] = [None] * len(cases)
    for members in _groups(dict(enumerate(cases)), defaults).values():
        try:
            facts = _shared_facts(cases[members[0][0]], members, rules)
        except Exception:  # each case alone reports its own reason
            continue
        start = 0
        for n, frame, _ in members:
            out[n] = facts.slice(start, frame.height)
            start += frame.height
    return out


def _group_verdicts(group: list[_Case], members: list, rules) -> dict[int, tuple[bool, str]]:
    """Verdicts of cases sharing one facts frame (same `_reference` and `_absent_columns`); {} when
    the frame or an evaluation fails, so each of them runs alone and reports its own reason."""
    try:
        facts = _shared_facts(_own_case(group[0]), members, rules)
        # Rules of one id (versions, or a payer case's active rule) are evaluated apart, so each
        # finding names the rule object that made it.
        layers: list[list[Rule]] = []
        for c in group:
            for rule in c.rules:
                if any(rule is r for layer in layers for r in layer):
                    continue
                free = next((layer for layer in layers if all(r.id != rule.id for r in layer)), None)
                if free is None:
                    layers.append(free := [])
                free.append(rule)
        found = {}
        for layer in layers:
            findings = evaluate(facts, rules.ruleset, rules.config, run_id="rule-case", rules=layer)
            parts = findings.partition_by("rule_id", "admin_id", as_dict=True, maintain_order=True)
            for rule in layer:
                found[id(rule)] = {aid: part for (rid, aid), part in parts.items() if rid == rule.id}
        applied = facts.select("admin_id", "payer_override").partition_by("admin_id", as_dict=True)
    except Exception:  # each case alone reports its own reason
        return {}
    verdicts = {}
    for c, (n, _, own_id) in zip(group, members, strict=True):
        (rule,) = c.rules
        own = found[id(rule)].get(own_id, empty_findings())
        try:
            if c.payer is None:
                verdicts[n] = _rule_verdict(c.kind, own)
            else:
                mine = applied[(own_id,)]["payer_override"].to_list()
                verdicts[n] = _payer_verdict(c.payer, c.kind, c.case, mine, own)
        except Exception:  # the case alone reports the reason
            continue
    return verdicts


def _rule_verdict(kind: str, own: pl.DataFrame) -> tuple[bool, str]:
    fired = bool(own.height)
    ok = fired if kind == "fires" else not fired
    return ok, "" if ok else ("did not fire" if kind == "fires" else "fired")


def _payer_verdict(payer, kind: str, case: dict, applied: list, own: pl.DataFrame) -> tuple[bool, str]:
    """`applied`: the payer files the case's own record falls under; `own`: its findings."""
    if kind == "fires" and applied != [payer.id]:  # a passes case may be a payer or date the file skips
        return False, f"the record falls under {applied[0] or 'no payer file'}, not {payer.id}: name the payer"
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


def _alone(c: _Case, defaults: dict, rules) -> tuple[bool, str]:
    """The verdict of one case evaluated on its own facts frame (a broken case is a failed case,
    with the reason)."""
    try:
        if c.payer is None:
            facts, admin_id = case_facts(c.case, defaults, rules.reference, rules.config, rules.ruleset.payers)
            found = evaluate(facts, rules.ruleset, rules.config, run_id="rule-case", rules=c.rules)
            return _rule_verdict(c.kind, found.filter(pl.col("admin_id") == admin_id))
        if not c.rules:
            return False, f"no active rule {c.case['_rule']}"
        facts, admin_id = case_facts(_own_case(c), defaults, rules.reference, rules.config, rules.ruleset.payers)
        applied = facts.filter(pl.col("admin_id") == admin_id)["payer_override"].to_list()
        if c.kind == "fires" and applied != [c.payer.id]:
            return _payer_verdict(c.payer, c.kind, c.case, applied, empty_findings())
        found = evaluate(facts, rules.ruleset, rules.config, run_id="payer-case", rules=c.rules)
        return _payer_verdict(c.payer, c.kind, c.case, applied, found.filter(pl.col("admin_id") == admin_id))
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"


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
