"""The run report in real headless Chromium (Debian's /usr/bin/chromium; Playwright never downloads one)."""

from __future__ import annotations

import shutil

import pytest
from test_run_report import CHARTS

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
]


def test_report_renders_with_charts_and_no_console_errors(two_nights):
    from playwright.sync_api import sync_playwright

    out, manifests = two_nights
    report = (out / manifests[1]["run_report"]).resolve()
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda req: requests.append(req.url))
            page.goto(report.as_uri(), wait_until="load")
            assert page.title() == f"b12pipeline night {manifests[1]['night']}"
            assert page.locator("h1").inner_text() == f"B12 night {manifests[1]['night']}"
            for chart in CHARTS:
                svg = page.locator(f"svg[data-chart='{chart}']")
                assert svg.count() == 1, chart
                box = svg.bounding_box()
                assert box and box["width"] > 100 and box["height"] > 20, (chart, box)
            # Bars are drawn with a visible width proportional to the counts.
            bars = page.locator("svg[data-chart='per-queue'] rect.bar")
            widths = [bars.nth(i).bounding_box()["width"] for i in range(bars.count())]
            coding = manifests[1]["findings"]["per_queue"]["coding"]
            assert bars.count() == 3 and max(widths) > 100 and (coding == 0 or widths[0] > 0)
            assert page.locator("svg[data-chart='trend'] circle").count() == 3 * len(manifests)
            report_errors, report_requests = list(errors), list(requests)
            # The validation pages, followed from the report: static, so they list the night's
            # results with no network at all (every request below is a file:// URL).
            link = page.locator("a[href='validation/index.html']")
            assert link.count() == 1
            link.click()
            page.wait_for_load_state("load")
            assert page.url.endswith("/validation/index.html")
            assert "canonical_extract" in page.locator("p").first.inner_text()
            rows = page.locator("table[data-table='validation-results'] tbody tr")
            validated = [i for i in manifests[1]["inputs"] if i["status"] == "processed"]
            assert rows.count() == len(validated) > 0
            for i in range(rows.count()):
                cells = rows.nth(i).locator("td")
                assert cells.nth(1).inner_text() in ("passed", "failed")
                assert int(cells.nth(2).inner_text().replace(",", "")) > 0  # rows checked
                assert int(cells.nth(3).inner_text()) > 0  # expectations evaluated
            assert any(
                rows.nth(i).inner_text().startswith(v["file"].rsplit(".", 1)[0])
                for v in validated
                for i in range(rows.count())
            )
            rows.first.locator("a").click()
            page.wait_for_load_state("load")
            assert "/validation/validations/" in page.url
            assert page.locator("table[data-table='expectations'] tbody tr").count() > 5
        finally:
            browser.close()
    assert report_errors == [] and errors == [], errors
    assert report_requests and all(u.startswith("file://") for u in requests), requests


def test_report_shows_the_coders_backlog_and_rule_effectiveness(two_nights):
    """Night 2's report: the open backlog per queue (as the worklog's snapshot counted it), its age,
    and a row per rule, rendered in Chromium; no finding id or comment on the page."""
    from playwright.sync_api import sync_playwright

    from b12pipeline.worklog import open_worklog, read_states

    out, manifests = two_nights
    snapshot = manifests[1]["worklog"]["snapshot"]
    states = read_states(open_worklog(out))
    open_now = states.filter(states["status"].is_in(["new", "open", "reopened", "in_progress"]))
    assert sum(q["open"] for q in snapshot["backlog"].values()) == open_now.height > 0
    report = (out / manifests[1]["run_report"]).resolve()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report.as_uri(), wait_until="load")
            section = page.locator("section#backlog")
            assert section.is_visible()
            assert section.locator("h2").first.inner_text() == f"Coders' backlog as of {manifests[1]['night']}"
            cards = dict(
                zip(
                    section.locator(".card .l").all_inner_texts(),
                    section.locator(".card .n").all_inner_texts(),
                    strict=True,
                )
            )
            assert cards["open work"] == f"{open_now.height:,}"
            assert cards["new tonight"] == f"{int((open_now['status'] == 'new').sum()):,}"
            rows = section.locator("table.backlog tbody tr")
            by_queue = {rows.nth(i).locator("td").first.inner_text(): rows.nth(i) for i in range(rows.count())}
            for queue, group in open_now.group_by("queue"):
                assert by_queue[queue[0]].locator("td").nth(1).inner_text() == f"{group.height:,}"
            for chart in ("backlog-queue", "backlog-age"):
                box = section.locator(f"svg[data-chart='{chart}']").bounding_box()
                assert box and box["width"] > 100 and box["height"] > 20, chart
            rule_rows = section.locator("table.rules tbody tr td:first-child").all_inner_texts()
            assert sorted(rule_rows) == sorted(states["rule_id"].unique().to_list())
            text = page.content()
            assert not any(fid in text for fid in states["finding_id"].to_list())
        finally:
            browser.close()
