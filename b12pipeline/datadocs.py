"""Great Expectations Data Docs for one run, built from the results the night already computed.

Validation runs once per file (validate.py) with SUMMARY and partial_unexpected_count 0, so a
result holds counts and percentages but no row values; stage_file saves it as JSON under
<out>/runs/<run_id>/gx_results/. After the run record, `build_data_docs` loads those results into
a throwaway ephemeral GX context whose only site is <out>/runs/<run_id>/validation/ and renders
them: no second validation pass (cheap every night), no GX project folder to maintain.

GX's HTML pulls its CSS/JS from public CDNs; opened offline it is unstyled but complete.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path

from b12pipeline.paths import OutputLayout, schemas_dir

RESULTS_DIR = "gx_results"
SITE_DIR = "validation"
SITE_NAME = "run"
ROW_VALUE_KEYS = (
    "partial_unexpected_list",
    "partial_unexpected_counts",
    "partial_unexpected_index_list",
    "unexpected_list",
    "unexpected_index_list",
    "unexpected_index_query",
    "unexpected_rows",
)


def validation_result_path(layout: OutputLayout, run_id: str, file_key: str) -> Path:
    return layout.run_dir(run_id) / RESULTS_DIR / f"{file_key}.json"


def docs_index(layout: OutputLayout, run_id: str) -> Path:
    return layout.run_dir(run_id) / SITE_DIR / "index.html"


def build_data_docs(out: Path | str, run_id: str, run_time: dt.datetime, suite_path: Path | None = None) -> Path | None:
    """Render the run's saved validation results into <run>/validation/; returns index.html (None: no results)."""
    layout = OutputLayout(Path(out))
    results = sorted((layout.run_dir(run_id) / RESULTS_DIR).glob("*.json"))
    if not results:
        return None
    import great_expectations as gx
    from great_expectations.core.expectation_validation_result import expectationSuiteValidationResultSchema
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    for name in ("great_expectations", "great_expectations.data_context.types.base"):  # as validate.py
        logging.getLogger(name).setLevel(logging.WARNING)
    site = layout.run_dir(run_id) / SITE_DIR
    shutil.rmtree(site, ignore_errors=True)  # a re-run of the same run id must not keep the earlier pages
    context = gx.get_context(mode="ephemeral")
    context.add_data_docs_site(
        site_name=SITE_NAME,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    spec = json.loads((suite_path or schemas_dir() / "expectations/canonical_extract.json").read_text())
    suite = context.suites.add(gx.ExpectationSuite(**spec))
    run = RunIdentifier(run_name=run_id, run_time=run_time)
    for path in results:
        result = expectationSuiteValidationResultSchema.load(_without_row_values(json.loads(path.read_text())))
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite.name),
            run_id=run,
            batch_identifier=path.stem,
        )
        context.validation_results_store.set(key, result)
    context.build_data_docs(site_names=[SITE_NAME])
    return site / "index.html"


def _without_row_values(result: dict) -> dict:
    """Belt and braces: a result saved by an older version (or by hand) may carry sample values."""
    for r in result.get("results", []):
        for key in ROW_VALUE_KEYS:
            if key in (r.get("result") or {}):
                r["result"][key] = []
    return result
