"""The per-run HTML report and validation pages: written by the flow, counts only, no patient identifiers."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from conftest import fixture_identifiers

from b12pipeline.schedule import night_of

CHARTS = ("per-queue", "per-severity", "per-rule", "trend", "top-place-of-service", "top-ordering-provider")


def run_dir(out, manifest):
    return out / "runs" / manifest["run_id"]


def test_flow_writes_report_and_data_docs_linked_from_manifest(two_nights):
    out, manifests = two_nights
    for m in manifests:
        assert (out / m["run_report"]).is_file()
        assert (out / m["validation_docs"]).is_file()
        page = (out / m["run_report"]).read_text()
        assert "href='validation/index.html'" in page
        assert (out / m["run_report"]).parent.joinpath("validation", "index.html") == out / m["validation_docs"]
        # One rendered validation page per file the night validated.
        pages = list((run_dir(out, m) / "validation" / "validations").rglob("*.html"))
        assert len(pages) == m["totals"]["files"] - m["totals"]["files_rejected"]


def test_report_has_every_chart_and_the_manifest_counts(two_nights):
    out, manifests = two_nights
    m = manifests[1]
    page = (out / m["run_report"]).read_text()
    for chart in CHARTS:
        assert f"data-chart='{chart}'" in page, chart
    for queue, n in m["findings"]["per_queue"].items():
        assert f"<title>{queue}: {n:,}</title>" in page
    for rule, n in m["findings"]["per_rule"].items():
        assert f"<title>{rule}: {n:,}</title>" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # offline, inline only


def test_trend_covers_the_previous_nights(two_nights):
    out, manifests = two_nights
    page = (out / manifests[1]["run_report"]).read_text()
    trend = page[page.index("data-chart='trend'") : page.index("Where findings come from")]
    for m in manifests:
        assert m["night"] in trend
        assert f"<title>coding {m['night']}: {m['findings']['per_queue']['coding']:,}</title>" in trend
    first = (out / manifests[0]["run_report"]).read_text()
    assert "Trend over the last 1 night(s)" in first and manifests[1]["night"] not in first.split("Trend")[1]


def test_findings_by_place_of_service_and_ordering_provider(two_nights):
    out, manifests = two_nights
    page = (out / manifests[0]["run_report"]).read_text()
    total = manifests[0]["findings"]["total"]
    assert total > 0
    # Every fixture row is place of service 11 and one ordering NPI: all findings land on one bar each.
    assert f"<title>11 office: {total}</title>" in page
    assert f"<title>1234567893: {total}</title>" in page


def test_no_patient_identifiers_anywhere_in_the_run_records(two_nights):
    out, _ = two_nights
    ids = fixture_identifiers()
    assert {"MRN00410001", "MAR-1001-1", "ORD-5001"} <= ids  # the scan really looks for something
    scanned = 0
    for path in (out / "runs").rglob("*"):
        if path.is_file() and path.suffix in (".html", ".json", ".md", ".txt"):
            text = path.read_text(errors="replace")
            leaked = sorted(i for i in ids if i in text)
            assert not leaked, f"{path.relative_to(out)} contains identifiers {leaked[:5]}"
            scanned += 1
    assert scanned >= 10


def test_gx_results_keep_counts_but_no_sample_values(two_nights):
    out, manifests = two_nights
    m = manifests[0]
    results = list((run_dir(out, m) / "gx_results").glob("*.json"))
    assert len(results) == 1
    saved = json.loads(results[0].read_text())
    failing = {  # GX's count of failing distinct values, per expectation
        f"{r['expectation_config']['type']}({r['expectation_config']['kwargs'].get('column')})": r["result"][
            "unexpected_count"
        ]
        for r in saved["results"]
        if not r["success"]
    }
    assert failing, "night 1 has quarantined rows, so some expectation failed"
    assert all(not r["result"].get("partial_unexpected_list") for r in saved["results"])
    counts_json = json.loads((run_dir(out, m) / "validation.json").read_text())
    recorded = next(iter(counts_json["files"].values()))["unexpected_counts"]
    (staged,) = m["inputs"]
    assert saved["rows_checked"] == staged["in_scope"] + staged["quarantined"]  # every B12 row, not the values
    for name, values in failing.items():  # rows failing: at least one per failing value, as the run recorded
        assert recorded[name] == saved["rows_failing"][name] >= values > 0
    page = next((run_dir(out, m) / "validation" / "validations").rglob("*.html")).read_text()
    for name, values in failing.items():  # the file's page shows values and rows failing
        column = name.split("(", 1)[1].rstrip(")")
        rows = saved["rows_failing"][name]
        assert re.search(
            rf"<td>{column}</td>.*?<span class='failed'>failed</span></td><td class='n'>[0-9,]+</td>"
            rf"<td class='n'>{values:,}</td><td class='n'>{rows:,}</td>",
            page,
        )


@pytest.mark.parametrize(
    "when, tz, night",
    [
        (dt.datetime(2024, 3, 3, 3, 30, tzinfo=dt.timezone.utc), "America/New_York", dt.date(2024, 3, 2)),
        (dt.datetime(2024, 3, 3, 3, 30, tzinfo=dt.timezone.utc), "UTC", dt.date(2024, 3, 3)),
        (dt.datetime(2024, 3, 10, 6, 30, tzinfo=dt.timezone.utc), "America/New_York", dt.date(2024, 3, 10)),  # DST day
        (dt.datetime(2024, 3, 3, 3, 30), "America/New_York", dt.date(2024, 3, 2)),  # naive = UTC
    ],
)
def test_night_is_the_scheduled_date_in_the_site_time_zone(when, tz, night):
    assert night_of(when, tz) == night


def test_unknown_time_zone_is_refused():
    with pytest.raises(ValueError, match="time zone"):
        night_of(dt.datetime(2024, 3, 3), "Mars/Olympus")


def test_rebuilding_data_docs_replaces_the_earlier_pages(two_nights):
    from b12pipeline.datadocs import build_data_docs

    out, manifests = two_nights
    m = manifests[0]
    stale = run_dir(out, m) / "validation" / "validations" / "earlier-file.html"
    stale.write_text("<html>from an earlier build</html>")
    index = build_data_docs(out, m["run_id"], dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
    assert index == out / m["validation_docs"]
    pages = list((run_dir(out, m) / "validation" / "validations").rglob("*.html"))
    assert len(pages) == m["totals"]["files"] and not stale.exists()
    assert "2030-01-01T00:00:00+00:00" in index.read_text()


def test_report_names_rules_by_title_and_trends_findings_per_thousand(two_nights):
    import html

    from b12pipeline.rulesets import load_ruleset

    out, manifests = two_nights
    m = manifests[1]
    page = (out / m["run_report"]).read_text()
    titles = {r.id: r.title for r in load_ruleset().active}
    rules = page[page.index("data-table='rules'") :].split("</table>", 1)[0]
    for rule, n in m["findings"]["per_rule"].items():
        assert f"<tr><td>{rule}</td><td>{html.escape(titles[rule])}</td><td class='num'>{n:,}</td></tr>" in rules
    trend = page[page.index("data-table='trend'") :].split("</table>", 1)[0]
    assert "per 1,000 administrations" in trend and "open backlog" in trend
    for night in manifests:
        per_thousand = 1000 * night["findings"]["total"] / night["totals"]["in_scope"]
        assert f"<td class='num'>{per_thousand:,.1f}</td>" in trend


def test_origin_counts_read_only_the_found_rows_and_tolerate_a_partition_without_the_column(tmp_path):
    """A history partition written before place_of_service existed counts as "(not recorded)"; rows
    without a finding do not count."""
    import polars as pl

    from b12pipeline.paths import OutputLayout
    from b12pipeline.queues import PART_NAME, atomic_write_parquet, partition_dir
    from b12pipeline.report_html import findings_by_origin

    layout = OutputLayout(tmp_path)
    days = [dt.date(2024, 3, 1), dt.date(2024, 3, 2)]
    old = pl.DataFrame({"admin_id": ["A1", "A2"], "ordering_provider_npi": ["1234567893", "1234567893"]})
    new = pl.DataFrame({"admin_id": ["B1"], "place_of_service": ["11"], "ordering_provider_npi": ["1518060555"]})
    for day, rows in zip(days, (old, new), strict=True):
        atomic_write_parquet(rows, layout.history / f"service_date={day}" / PART_NAME)
    for day, ids in zip(days, (["A1"], ["B1"]), strict=True):
        atomic_write_parquet(pl.DataFrame({"admin_id": ids}), partition_dir(layout.queues, "coding", day) / PART_NAME)
    origin = findings_by_origin(layout, days)
    assert sorted(origin["place_of_service"]) == [("(not recorded)", 1), ("11", 1)]
    assert sorted(origin["ordering_provider_npi"]) == [("1234567893", 1), ("1518060555", 1)]


def test_manifest_counts_only_the_dates_the_night_evaluated(two_nights):
    """Counted from the queues as the last night left them: its dates' findings, not the other dates'."""
    import polars as pl

    from b12pipeline.queues import read_queue

    out, manifests = two_nights
    m = manifests[1]
    every = read_queue(out / "queues")
    evaluated = [dt.date.fromisoformat(d) for d in m["dates_evaluated"]]
    mine = every.filter(pl.col("service_date").is_in(evaluated))
    assert 0 < mine.height < every.height  # the queues hold other dates' findings too
    assert m["findings"]["total"] == mine.height
    assert m["findings"]["per_rule"] == dict(mine.group_by("rule_id").len().sort("rule_id").iter_rows())
    assert {q: n for q, n in m["findings"]["per_queue"].items() if n} == dict(mine.group_by("queue").len().iter_rows())
