"""The synthetic generator: seeded, realistic, and its labels are exactly the findings (docs/synth.md)."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from typer.testing import CliRunner

from b12pipeline import normalize, synth
from b12pipeline.cli import app
from b12pipeline.config import load_site_config
from b12pipeline.crossrow import add_cross_row_facts
from b12pipeline.paths import rules_dir
from b12pipeline.pipeline import Rules, apply_staged, stage_file
from b12pipeline.queues import read_queue
from b12pipeline.rulesets import load_rule_file, load_ruleset, rule_files

# Rule files synth seeds no defect for, each with the reason; every other rule file must be seeded.
NOT_SEEDED = {
    "ADMIN-006": "the cyanide antidote (Cyanokit) is not among the products synth generates",
    "MUE-001": "reads the CMS MUE tables, which the shipped reference does not hold (tests/test_cms_tables.py)",
    "NDC-006": "reads the CMS NDC-HCPCS crosswalk, not shipped (tests/test_cms_tables.py)",
    "UNITS-004": "reads the CMS NDC-HCPCS crosswalk, not shipped (tests/test_cms_tables.py)",
}
CATALOG_IDS = {load_rule_file(p).id for p in rule_files(rules_dir())} - set(NOT_SEEDED)


def test_every_catalog_rule_has_a_seeded_defect():
    seeded = {rule for rule, _ in synth.RECIPES} | set(synth.STRUCTURAL)
    assert seeded == CATALOG_IDS
    assert set(NOT_SEEDED) <= {r.id for r in load_ruleset().rules}, "an exception names no rule file"


def test_same_seed_same_extract_and_labels_other_seed_differs():
    a, b = synth.generate(2000, seed=4), synth.generate(2000, seed=4)
    assert a.frame.equals(b.frame) and a.labels.equals(b.labels)
    assert not synth.generate(2000, seed=5).frame.equals(a.frame)


def test_rows_shares_and_realism():
    night = synth.generate(8000, seed=2, b12_share=0.25, defect_rate=0.1)
    frame, ref = night.frame, Rules.load().reference
    assert frame.height == 8000 and frame["admin_id"].n_unique() == 8000
    b12 = frame.filter(normalize.b12_scope(ref))
    assert b12.height == 2000 == night.counts["b12_rows"]
    labelled = set(night.labels["admin_id"].to_list())
    clean = b12.filter(~pl.col("admin_id").is_in(list(labelled)))
    given = clean.filter(pl.col("mar_action") == "Given")
    # real reference NDCs, Luhn-valid NPIs, mostly 1000 mcg, IM/SC only, covered diagnoses
    ndc11, _ = normalize.ndc_parts()
    assert given.select(ndc11.is_in(ref.ndcs.implode()).all()).item()
    assert given.select(normalize.npi_valid().all()).item()
    mcg = given.filter(pl.col("dose_unit") == "mcg")["dose_value"].cast(pl.Float64)
    assert mcg.is_between(100, 1000).all() and (mcg == 1000).mean() > 0.7
    assert set(given["route"].unique()) == {"IM", "SC"}
    assert given["diagnosis_codes"].is_not_null().all()
    assert 0 < (b12["mar_action"] != "Given").sum() < 0.1 * b12.height
    assert night.labels["admin_id"].is_in(b12["admin_id"].implode()).all()  # defects only on B12 rows
    assert night.labels.height == pytest.approx(0.1 * 2000, abs=3)


def test_patient_histories_have_loading_then_monthly_doses():
    frame = synth.generate(20000, seed=8, defect_rate=0.0, b12_share=0.5, days=180).frame
    given = frame.filter((pl.col("mar_action") == "Given") & normalize.b12_scope(Rules.load().reference))
    gaps = (
        given.select("patient_id", pl.col("admin_time").str.slice(0, 10).str.to_date().alias("d"))
        .sort("patient_id", "d")
        .with_columns((pl.col("d") - pl.col("d").shift().over("patient_id")).dt.total_days().alias("gap"))
        .drop_nulls("gap")
    )
    counts = gaps["gap"].value_counts()
    assert set(gaps["gap"].unique()) <= {7} | set(range(31, 39))  # weekly loading, then monthly
    assert counts.filter(pl.col("gap") == 7)["count"].item() > 0
    assert counts.filter(pl.col("gap") > 30)["count"].sum() > 0


def test_cli_writes_the_extract_and_its_labels(tmp_path):
    out = tmp_path / "night.ndjson"
    result = CliRunner().invoke(
        app, ["synth", "--rows", "500", "--seed", "3", "--format", "fhir", "--out", str(out), "--defect-rate", "0.2"]
    )
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 500
    labels = pl.read_parquet(tmp_path / "night.ndjson.labels.parquet")
    assert labels.columns == ["admin_id", "rule_id"] and labels.height > 0
    bad = CliRunner().invoke(app, ["synth", "--rows", "5", "--format", "xml", "--out", str(out)])
    assert bad.exit_code == 2


@pytest.mark.parametrize(
    ("fmt", "make", "said"),
    [
        ("csv", lambda p: p.mkdir(), "is not a file"),
        ("fhir-bulk", lambda p: p.write_text(""), "is not a folder"),
        ("csv", lambda p: None, "does not exist"),
    ],
)
def test_cli_out_of_the_wrong_kind_is_one_line_exit_2(tmp_path, fmt, make, said):
    out = tmp_path / "x" if said != "does not exist" else tmp_path / "missing" / "x.csv"
    make(out)
    result = CliRunner().invoke(app, ["synth", "--rows", "5", "--format", fmt, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert said in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- a 100k-row night with seeded defects: findings == labels -----------------------


@pytest.fixture(scope="module")
def night_100k(tmp_path_factory):
    rules = Rules.load()
    night = synth.generate(100_000, seed=2024, defect_rate=0.05)
    root = tmp_path_factory.mktemp("synth100k")
    path = root / "night.parquet"
    from b12pipeline.writers import write_extract

    write_extract(night.frame, "parquet", path)
    result = stage_file(path, root / "out", "run-synth", dt.date(2024, 5, 1), rules)
    assert result.status == "processed", result.error
    apply_staged([result.staged], root / "out", rules, "run-synth")
    findings = read_queue(root / "out" / "queues").select("admin_id", "rule_id")
    return night, rules, result, findings, pl.read_parquet(result.staged) if result.staged else None


def test_100k_night_findings_equal_the_labels_for_every_rule_in_the_ruleset(night_100k):
    night, rules, result, findings, _ = night_100k
    assert result.rows_read == 100_000 and result.quarantined == 0
    assert result.in_scope == night.counts["b12_rows"] == 25_000
    ids = {r.id for r in rules.ruleset.active}
    assert CATALOG_IDS <= ids  # the whole catalog is checked (a retired rule drops its labels)
    expected = night.labels.filter(pl.col("rule_id").is_in(list(ids)))
    per_rule_expected = dict(expected.group_by("rule_id").len().iter_rows())
    per_rule_found = dict(findings.group_by("rule_id").len().iter_rows())
    assert per_rule_found == per_rule_expected  # counts per rule
    assert all(per_rule_expected.get(r, 0) >= 30 for r in ids if r in CATALOG_IDS)  # every rule seeded
    missed = expected.join(findings, on=["admin_id", "rule_id"], how="anti")
    extra = findings.join(expected, on=["admin_id", "rule_id"], how="anti")
    assert missed.height == 0, f"seeded defects not found: {missed.group_by('rule_id').len().rows()}"
    assert extra.height == 0, f"findings on clean rows: {extra.group_by('rule_id').len().rows()}"
    clean = night.frame.filter(~pl.col("admin_id").is_in(night.labels["admin_id"].implode()))
    assert not findings["admin_id"].is_in(clean["admin_id"].implode()).any()


def test_100k_night_cross_row_labels_match_the_cross_row_facts(night_100k):
    """FREQ-001 and DUP-001 labels, checked again on the cross-row facts those rules read."""
    night, rules, _, _, staged = night_100k
    cfg = load_site_config(rules.ruleset.directory / "site.yaml")
    facts = add_cross_row_facts(normalize.facts(staged, rules.reference, cfg), cfg)
    injection = pl.col("given") & pl.col("route_class").is_in(["injectable", "intravenous"])
    freq = facts.filter(
        injection
        & pl.col("payer_type").is_in(list(cfg.frequency_payers))
        & pl.col("prior_injection_within_window")
        & (pl.col("days_since_first_injection") > cfg.loading_phase_days)
    )
    dup = facts.filter(injection & pl.col("duplicate_of_prior"))
    labels = night.labels
    assert set(freq["admin_id"]) == set(labels.filter(pl.col("rule_id") == "FREQ-001")["admin_id"])
    assert set(dup["admin_id"]) == set(labels.filter(pl.col("rule_id") == "DUP-001")["admin_id"])
    assert freq.height >= 30 and dup.height >= 30


def test_different_seeds_never_share_administration_ids_and_labels_are_not_extracts(tmp_path):
    from b12pipeline.archive import scan_landing
    from b12pipeline.synth import generate
    from b12pipeline.writers import labels_path, write_extract

    three, eleven = generate(3_000, seed=3), generate(3_000, seed=11)
    assert not set(three.frame["admin_id"]) & set(eleven.frame["admin_id"])
    assert three.labels["admin_id"].is_in(three.frame["admin_id"].implode()).all()
    landing = tmp_path / "landing"
    landing.mkdir()
    write_extract(three.frame, "csv", landing / "night.csv")
    three.labels.write_parquet(labels_path(landing / "night.csv"))
    scan = scan_landing(landing, tmp_path / "archive")
    assert [p.name for p in scan.new] == ["night.csv"]  # night.csv.labels.parquet is not read as an extract
    assert [i["file"] for i in scan.ignored] == ["night.csv.labels.parquet"]
