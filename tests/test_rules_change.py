"""Rules are data. Editing one YAML file (no code) changes the findings
and the ruleset_version of a run, through the pipeline's own functions on the bundled fixtures."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import polars as pl

from b12pipeline.files import sha256_file
from b12pipeline.paths import rules_dir
from b12pipeline.pipeline import Rules, apply_staged, make_run_id, stage_file
from b12pipeline.queues import read_queue

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fixtures"
NIGHT = dt.date(2024, 3, 2)


def run_night(rules_folder: Path, out: Path) -> tuple[pl.DataFrame, str, str]:
    """Stage both fixture extracts and apply them: (documentation queue, ruleset_version, run_id)."""
    rules = Rules.load(rules_folder)
    extracts = [FIXTURES / "emar_2024-03-01.csv", FIXTURES / "emar_2024-03-02.parquet"]
    run_id = make_run_id(NIGHT, [sha256_file(p) for p in extracts], rules.ruleset.version)
    staged = [stage_file(p, out, run_id, NIGHT, rules).staged for p in extracts]
    apply_staged([s for s in staged if s], out, rules, run_id)
    return read_queue(out / "queues", "documentation"), rules.ruleset.version, run_id


def test_one_yaml_edit_changes_findings_and_ruleset_version(tmp_path: Path):
    folder = tmp_path / "rules"
    shutil.copytree(rules_dir(), folder)
    before, version_before, run_before = run_night(folder, tmp_path / "before")
    doc = before.filter(pl.col("rule_id") == "DOC-001")
    assert {dt.date(2024, 3, 1), dt.date(2024, 3, 2)} <= set(doc["service_date"])
    assert set(doc["severity"]) == {"warning"}
    others = before.filter(pl.col("rule_id") != "DOC-001").drop("run_id", "ruleset_version")
    assert set(doc["ruleset_version"]) == {version_before}

    # Compliance decides: a missing lot is an error, and only from 2024-03-02 on. One file, no code.
    path = folder / "documentation" / "DOC-001.yaml"
    text = path.read_text()
    edited = text.replace("severity: warning", "severity: error").replace(
        "status: active", "status: active\neffective_from: 2024-03-02"
    )
    assert edited != text
    path.write_text(edited)

    after, version_after, run_after = run_night(folder, tmp_path / "after")
    doc = after.filter(pl.col("rule_id") == "DOC-001")
    assert doc.height > 0 and doc["service_date"].min() == dt.date(2024, 3, 2)
    assert set(doc["severity"]) == {"error"}
    assert after.filter(pl.col("rule_id") != "DOC-001").drop("run_id", "ruleset_version").equals(others)
    assert version_after != version_before and run_after != run_before
    assert set(after["ruleset_version"]) == {version_after}
    # the finding that remains keeps its id: the same (admin_id, rule_id) across rule versions
    kept = before.filter((pl.col("rule_id") == "DOC-001") & (pl.col("service_date") >= dt.date(2024, 3, 2)))
    assert sorted(kept["finding_id"]) == sorted(doc["finding_id"])
