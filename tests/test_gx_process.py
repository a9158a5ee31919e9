"""GX in a process of its own (b12pipeline/gx_process.py): the same validation as GX in this process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import polars as pl
import pytest

from b12pipeline import validate as validation
from b12pipeline.gx_process import gx_in_its_own_process
from b12pipeline.ingest.read import read_extract
from b12pipeline.paths import suite_file

NIGHT_CSV = "emar_2024-03-01.csv"


@pytest.fixture
def suite_copy(tmp_path):
    """The shipped suite under another path, so its process serves only this test."""
    path = tmp_path / "suite.json"
    shutil.copyfile(suite_file(), path)
    return path


def _bad_rows(fixtures_dir) -> pl.DataFrame:
    """The fixture night (three rows GX fails) and 41 more rows with two malformed doses."""
    frame = read_extract(fixtures_dir / NIGHT_CSV).frame
    many = pl.concat([frame.head(1)] * 40).with_columns(
        pl.format("MAR-DUP-{}", pl.int_range(40)).alias("admin_id"), pl.lit("1000 mcg").alias("dose_value")
    )
    return pl.concat([frame, many, frame.slice(1, 1).with_columns(pl.lit("one thousand").alias("dose_value"))])


def _same(a: validation.ValidationOutcome, b: validation.ValidationOutcome) -> None:
    assert a.valid.equals(b.valid) and a.quarantine.equals(b.quarantine)
    assert a.unexpected_counts == b.unexpected_counts
    assert json.dumps(a.gx_result, sort_keys=True, default=str) == json.dumps(b.gx_result, sort_keys=True, default=str)


def test_validation_through_gx_in_its_own_process_is_validation_in_this_one(fixtures_dir, suite_copy):
    rows = _bad_rows(fixtures_dir)
    here = validation.validate(rows)
    assert here.quarantine.height == 44  # three fixture rows and the 41 malformed doses
    with gx_in_its_own_process(suite_copy) as served:
        assert validation.suite_runner(suite_copy) is served
        _same(here, validation.validate(rows, suite_path=suite_copy))
        # GX's own verdicts for one expectation (asked for when its count and the Polars mask disagree)
        values = validation.distinct_by_key(rows, "dose_value", pl.col("dose_value"))
        name = "expect_column_values_to_match_regex(dose_value)"
        local = validation.suite_runner().failing_values(values, name)
        assert served.failing_values(values, name).equals(local) and local.sum() == 4
    # The block over, its process is gone and the suite is GX's in this process again.
    assert served._process.poll() is not None
    assert isinstance(validation.suite_runner(suite_copy), validation.SuiteRunner)


def test_a_gx_process_that_stops_is_replaced_by_gx_in_this_process(fixtures_dir, suite_copy):
    rows = _bad_rows(fixtures_dir)
    with gx_in_its_own_process(suite_copy) as served:
        served._process.kill()
        served._process.wait()
        _same(validation.validate(rows), validation.validate(rows, suite_path=suite_copy))


def test_a_suite_gx_refuses_in_its_process_is_reported_where_validation_runs(fixtures_dir, suite_copy):
    spec = json.loads(suite_copy.read_text())
    spec["expectations"][0]["type"] = "expect_column_values_to_be_misspelled"
    suite_copy.write_text(json.dumps(spec))
    with (
        gx_in_its_own_process(suite_copy),
        pytest.raises(validation.SuiteError, match="expect_column_values_to_be_misspelled has no row-mask translation"),
    ):
        validation.validate(read_extract(fixtures_dir / NIGHT_CSV).frame, suite_path=suite_copy)


def test_the_process_that_starts_gx_elsewhere_never_imports_it(fixtures_dir):
    """The point of the process: GX (and pandas, SciPy) stay out of the night's own process."""
    script = textwrap.dedent(
        f"""
        import sys
        from b12pipeline.ingest.read import read_extract
        from b12pipeline.gx_process import gx_in_its_own_process
        from b12pipeline.validate import validate
        with gx_in_its_own_process():
            outcome = validate(read_extract({str(fixtures_dir / NIGHT_CSV)!r}).frame)
        print(outcome.quarantine.height, *(m in sys.modules for m in ("great_expectations", "pandas", "scipy")))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "False", "False", "False"]


def test_gx_process_defers_what_no_suite_here_uses_until_it_is_used():
    """SciPy's statistics and Altair stay unread through GX's import and the suite's runner; the first
    use of either still gets the real module, for GX's own references as for a new importer."""
    script = textwrap.dedent(
        """
        import sys
        from b12pipeline.gx_process import DEFERRED, DeferredModule, defer
        assert all(defer(name) for name in DEFERRED)
        from b12pipeline.paths import suite_file
        from b12pipeline.validate import SuiteRunner
        SuiteRunner(suite_file(None))
        print(*(type(sys.modules[name]) is DeferredModule for name in DEFERRED), "scipy.special" in sys.modules)
        from great_expectations.expectations.core import expect_column_kl_divergence_to_be_less_than as kl
        print(kl.stats.norm.cdf(0.0), type(sys.modules["scipy.stats"]) is DeferredModule)
        from scipy.stats import norm
        import altair
        print(norm is kl.stats.norm, kl.alt.Chart is altair.Chart, defer("scipy.stats"))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "False", "0.5", "False", "True", "True", "False"]


def test_starting_gx_process_imports_nothing_the_command_would_wait_for():
    """`run` and `nightly` start GX's process before they take --out and start Prefect (cli/run.py
    gx_started): starting it must not import Polars or the validation code, which a refused --out
    (another run holds it) would then wait for, and which Prefect's start has no use for yet."""
    script = textwrap.dedent(
        """
        import sys
        from b12pipeline.gx_process import gx_process_started
        with gx_process_started() as process:
            started = process is not None and process._process.poll() is None
        print(started, *(m in sys.modules for m in ("polars", "b12pipeline.validate", "great_expectations")))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "False", "False"]
