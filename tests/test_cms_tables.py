"""CMS quarterly tables: `reference import` on files in the documented layouts (preamble, Latin-1),
refusals naming the expected column, versioned tables, the three rules that use them, reference
versions on findings and the staleness warning."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from b12pipeline.cli import app
from b12pipeline.cms import CmsFileError, import_cms_file, quarter_from_name, reference_warnings, stale_tables
from b12pipeline.engine.evaluate import evaluate
from b12pipeline.facts import evaluation_facts
from b12pipeline.paths import rules_dir
from b12pipeline.pipeline import Rules
from b12pipeline.rulecases import case_defaults, case_frame
from b12pipeline.rulesets import ruleset_version

ASP_HEADER = "HCPCS,Short Description,Labeler Name,NDC2,Drug Name,HCPCS Dosage,PKG SIZE,PKG QTY,BILLUNITS,BILLUNITSPKG"
# The published crosswalk: title and notice lines before the header, Latin-1 text (é in a labeler).
ASP_FILE = (
    "ASP NDC-HCPCS Crosswalk, January 2026\n"
    "\u00a9 CPT codes and descriptions only are copyright American Medical Association.\n"
    ",,,,,,,,,\n"
    f"{ASP_HEADER}\n"
    "J3420,Vitamin b12 injection,American Regent,00517-0031-25,Cyanocobalamin,UP TO 1000 MCG,1,25,1,25\n"
    "J3420,Vitamin b12 injection,Laboratoires Séquence,69680-0121-30,Cyanocobalamin,UP TO 1000 MCG,30,1,30,30\n"
)
NOC_FILE = (
    "NOC NDC-HCPCS crosswalk\n"
    "Drug Generic Name,Drug Brand Name,Labeler Name,NDC2\n"
    "Hydroxocobalamin,,Actavis,00591-2888-30\n"
)
MUE_PRACTITIONER = (
    "CMS Medically Unlikely Edits, Practitioner Services\n"
    "HCPCS/CPT Code,Practitioner Services MUE Values,MUE Adjudication Indicator,MUE Rationale\n"
    "J3420,1,3 Date of Service Edit: Clinical,Clinical: Data\n"
)
MUE_FACILITY = (
    "HCPCS/CPT Code,Outpatient Hospital Services MUE Values,MUE Adjudication Indicator,MUE Rationale\n"
    "J3420,2,1 Line Edit,Nature of Service/Procedure\n"
)
HCPCS_FILE = (rules_dir() / "reference" / "sources" / "hcpcs_2020_rows.csv").read_text()


@pytest.fixture()
def rules_copy(tmp_path) -> Path:
    folder = tmp_path / "rules"
    shutil.copytree(rules_dir(), folder)
    return folder


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_asp_crosswalk_with_a_latin1_preamble_imports_as_a_versioned_table(tmp_path, rules_copy):
    src = write(tmp_path, "ASP_NDC-HCPCS_Crosswalk_2026Q1.csv", ASP_FILE, "latin-1")
    result = CliRunner().invoke(app, ["reference", "import", "asp-crosswalk", str(src), "--rules", str(rules_copy)])
    assert result.exit_code == 0, result.output
    cms = rules_copy / "reference" / "cms"
    meta = yaml.safe_load((cms / "asp_crosswalk.version.yaml").read_text())
    assert meta["quarter"] == "2026Q1" and meta["encoding"] == "latin-1" and meta["preamble_lines"] == 3
    assert meta["rows"] == 2 and meta["version"].startswith("2026Q1-")
    table = pl.read_csv(cms / "asp_crosswalk.csv", infer_schema=False)
    assert table["ndc11"].to_list() == ["00517003125", "69680012130"]
    assert "Laboratoires Séquence" in table["labeler"].to_list()


@pytest.mark.parametrize(
    "kind, text, expected",
    [
        ("hcpcs", HCPCS_FILE.replace("LONG DESCRIPTION", "LONG DESC"), "'LONG DESCRIPTION'"),
        ("asp-crosswalk", ASP_FILE.replace(",BILLUNITSPKG", ",BILL UNITS PKG"), "'BILLUNITSPKG'"),
        ("noc-crosswalk", NOC_FILE.replace("NDC2", "NDC"), "'NDC2'"),
        ("mue", MUE_PRACTITIONER.replace("MUE Adjudication Indicator", "MAI"), "'MUE Adjudication Indicator'"),
        ("mue", MUE_PRACTITIONER.replace("HCPCS/CPT Code", "Code"), "'HCPCS/CPT Code'"),
    ],
)
def test_each_loader_refuses_a_wrong_header_naming_the_expected_column(tmp_path, rules_copy, kind, text, expected):
    src = write(tmp_path, "file_2026Q1.csv", text)
    before = ruleset_version(rules_copy)
    result = CliRunner().invoke(app, ["reference", "import", kind, str(src), "--rules", str(rules_copy)])
    assert result.exit_code == 1
    assert expected in result.output and "file_2026Q1.csv" in result.output and "Traceback" not in result.output
    assert ruleset_version(rules_copy) == before  # nothing written


def test_bad_rows_are_refused_with_the_row(tmp_path, rules_copy):
    src = write(tmp_path, "x_2026Q1.csv", MUE_PRACTITIONER.replace("J3420,1,3", "J3420,one,3"))
    with pytest.raises(CmsFileError, match="mue is not a whole number of units"):
        import_cms_file("mue", src, rules_copy)


def test_quarter_comes_from_the_name_or_must_be_given(tmp_path, rules_copy):
    assert quarter_from_name("ASP_NDC-HCPCS_Crosswalk_2026Q1.csv") == "2026Q1"
    assert quarter_from_name("HCPC2026_JUL_ANWEB.csv") == "2026Q3"
    assert quarter_from_name("MCR_MUE_PractitionerServices_Effective_April_2025.csv") == "2025Q2"
    src = write(tmp_path, "crosswalk.csv", ASP_FILE)
    result = CliRunner().invoke(app, ["reference", "import", "asp-crosswalk", str(src), "--rules", str(rules_copy)])
    assert result.exit_code == 2 and "--quarter" in result.output


def test_mue_practitioner_and_facility_tables_and_the_mai(tmp_path, rules_copy):
    import_cms_file("mue", write(tmp_path, "p.csv", MUE_PRACTITIONER), rules_copy, "2026Q1")
    import_cms_file("mue", write(tmp_path, "f.csv", MUE_FACILITY), rules_copy, "2026Q1")
    cms = rules_copy / "reference" / "cms"
    assert pl.read_csv(cms / "mue_practitioner.csv", infer_schema=False).row(0) == ("J3420", "1", "3", "Clinical: Data")
    assert pl.read_csv(cms / "mue_facility.csv", infer_schema=False).row(0)[:3] == ("J3420", "2", "1")


def test_the_shipped_hcpcs_table_is_built_from_the_public_rows(tmp_path):
    copy = tmp_path / "rules"
    (copy / "reference").mkdir(parents=True)
    src = rules_dir() / "reference" / "sources" / "hcpcs_2020_rows.csv"
    import_cms_file("hcpcs", src, copy, "2020Q1")
    for name in ("hcpcs.csv", "hcpcs.version.yaml"):
        shipped = (rules_dir() / "reference" / "cms" / name).read_bytes()
        assert (copy / "reference" / "cms" / name).read_bytes() == shipped, name


def findings_with_tables(rules_copy: Path, tmp_path: Path, *changes: dict) -> pl.DataFrame:
    import_cms_file("asp-crosswalk", write(tmp_path, "a.csv", ASP_FILE, "latin-1"), rules_copy, "2026Q1")
    import_cms_file("noc-crosswalk", write(tmp_path, "n.csv", NOC_FILE), rules_copy, "2026Q1")
    import_cms_file("mue", write(tmp_path, "m.csv", MUE_PRACTITIONER), rules_copy, "2026Q1")
    rules = Rules.load(rules_copy)
    defaults = case_defaults(rules_copy)
    records = [{**defaults, "admin_id": f"T-{i}", "patient_id": f"P-{i}", **c} for i, c in enumerate(changes)]
    facts = evaluation_facts(case_frame(records), rules.reference, rules.config, rules.ruleset.payers)
    return evaluate(facts, rules.ruleset, rules.config, run_id="t")


def test_the_new_rules_fire_on_imported_tables_with_the_versions_on_the_findings(rules_copy, tmp_path):
    found = findings_with_tables(
        rules_copy,
        tmp_path,
        {},  # clean: listed under J3420, ML1 = 1 unit, 1 unit <= MUE 1
        {"charge_hcpcs": "J3490"},  # NDC-006 (and CODE-002)
        {"dose_value": "2000", "charge_units": "2", "charge_ndc_qty": "1"},  # UNITS-004: ML1 is 1 unit
        {"dose_value": "2000", "charge_units": "2", "charge_ndc_qty": "2"},  # MUE-001: 2 > 1 on the DOS (MAI 3)
    )
    by = {(r["admin_id"], r["rule_id"]): r for r in found.to_dicts()}
    assert not [k for k in by if k[0] == "T-0"]
    assert (
        by[("T-1", "NDC-006")]["message"] == "NDC 00517003125 billed as J3490; the CMS crosswalk lists it under J3420"
    )
    assert ("T-2", "UNITS-004") in by and ("T-2", "MUE-001") in by
    mue = by[("T-3", "MUE-001")]
    assert mue["message"] == "J3420: 2 unit(s) on this date of service, above the MUE of 1 (MAI 3)"
    assert "mue_practitioner 2026Q1-" in mue["reference_versions"] and "products " in mue["reference_versions"]
    assert "asp_crosswalk 2026Q1-" in by[("T-1", "NDC-006")]["reference_versions"]
    assert all(v.startswith("products ") or "products " in v for v in found["reference_versions"])
    assert "asp_crosswalk" not in by[("T-1", "CODE-002")]["reference_versions"]  # CODE-002 reads no crosswalk


def test_imported_tables_change_the_ruleset_version(rules_copy, tmp_path):
    before = ruleset_version(rules_copy)
    import_cms_file("mue", write(tmp_path, "m.csv", MUE_PRACTITIONER), rules_copy, "2026Q1")
    assert ruleset_version(rules_copy) != before


def test_staleness_warning_after_two_quarters_by_default(rules_copy, tmp_path):
    import_cms_file("mue", write(tmp_path, "m.csv", MUE_PRACTITIONER), rules_copy, "2026Q1")
    assert [w for w in reference_warnings(rules_copy, dt.date(2026, 9, 30)) if "mue_practitioner" in w] == []
    late = [w for w in reference_warnings(rules_copy, dt.date(2026, 10, 1)) if "mue_practitioner" in w]
    assert late and "3 quarters" in late[0] and "reference_max_age_quarters 2" in late[0]
    site = rules_copy / "site.yaml"
    site.write_text(site.read_text().replace("reference_max_age_quarters: 2", "reference_max_age_quarters: 4"))
    assert [w for w in reference_warnings(rules_copy, dt.date(2026, 10, 1)) if "mue_practitioner" in w] == []


def test_the_shipped_2020_hcpcs_table_is_reported_stale():
    (line,) = stale_tables(Rules.load().reference.cms, dt.date(2024, 3, 1), 2)
    assert line.startswith("reference table hcpcs is from 2020Q1")
