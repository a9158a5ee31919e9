"""The product reference: built from the verbatim FDA rows, overlay wins, NDCs as 11 digits."""

from __future__ import annotations

import csv
import importlib.util
import shutil

import polars as pl

from b12pipeline.paths import rules_dir
from b12pipeline.reference import load_reference


def _builder():
    spec = importlib.util.spec_from_file_location("build_ref", rules_dir() / "reference" / "build_product_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_products_table_is_what_the_builder_makes():
    built = _builder().build()
    with open(rules_dir() / "reference" / "products.csv", newline="") as fh:
        committed = list(csv.DictReader(fh))
    assert committed == built


def test_strength_container_and_inner_ndcs_are_parsed_from_the_listing():
    products = {r["ndc11"]: r for r in _builder().build()}
    assert products["85551012030"]["mcg_per_ml"] == "2000"  # "2 mg/mL": never assume 1000
    assert products["00517003125"]["container_type"] == "multi_dose"
    assert products["00517003101"]["ndc_level"] == "inner"  # (0517-0031-01) in the description
    assert products["70756063510"]["container_type"] == "unknown"  # plain "VIAL": listing does not say
    assert products["69680012130"]["ml_per_container"] == "30"
    assert products["00591288830"]["ingredient"] == "hydroxocobalamin"


def test_site_overlay_wins_over_the_fda_row(tmp_path):
    ref_dir = tmp_path / "reference"
    shutil.copytree(rules_dir() / "reference", ref_dir)
    with open(ref_dir / "formulary_overlay.csv", "a", newline="") as fh:
        fh.write(
            "70756063510,package,70756-635,cyanocobalamin,1000,1,single_dose,Lifestar Pharma LLC,"
            "site pharmacy product master\n"
        )
    ref = load_reference(ref_dir)
    row = ref.products.filter(pl.col("ndc11") == "70756063510").row(0, named=True)
    assert row["container_type"] == "single_dose" and row["origin"] == "site_overlay"
    assert ref.products["ndc11"].is_unique().all()
