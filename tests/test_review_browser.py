"""The review web app in real headless Chromium (Debian's /usr/bin/chromium; Playwright never downloads one),
against the real `b12pipeline review` server on a copy of a real store. Any request that leaves the
server is blocked and recorded; the test fails if there is one, or any console error.
"""

from __future__ import annotations

import contextlib
import getpass
import re
import subprocess

import polars as pl
import pytest
from conftest import fixture_identifiers
from review_support import BIN, copy_store, review_server
from test_browser import CHROMIUM, CHROMIUM_ARGS

from b12pipeline.queues import read_queue

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@contextlib.contextmanager
def browser_page(base: str):
    """A page whose console errors and outside requests are collected (outside requests are aborted)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    outside: list[str] = []

    def gate(route):
        if route.request.url.startswith(base + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.route("**/*", gate)
            page = context.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors, outside
        finally:
            browser.close()


def test_coder_filters_dismisses_bulk_assigns_and_the_dashboard_draws(two_nights, tmp_path):
    store = copy_store(two_nights[0], tmp_path / "out")
    coding = read_queue(store / "queues", "coding")
    rule = coding["rule_id"].value_counts(sort=True)["rule_id"][0]
    log = tmp_path / "server.log"
    with review_server(store, log) as base, browser_page(base) as (page, errors, outside):
        # The coding queue, filtered to one rule (the select submits the filter form).
        page.goto(base + "/queues/coding")
        assert page.locator("a.tab.current[data-queue='coding'] [data-count='open']").inner_text().endswith("open")
        with page.expect_navigation():
            page.select_option("#filters select[name='rule']", rule)
        rows = page.locator("table.findings tbody tr[data-finding]")
        expected = coding.filter(pl.col("rule_id") == rule).height
        assert rows.count() == expected and page.locator("#total").get_attribute("data-total") == str(expected)
        assert set(page.locator("table.findings tbody tr td:nth-child(4) a").all_inner_texts()) == {rule}
        finding_id = rows.first.get_attribute("data-finding")

        # Dismiss it as a false positive from its page (PATCH /api/findings/{id}; the page reloads).
        with page.expect_navigation():
            page.locator(f"tr[data-finding='{finding_id}'] td:nth-child(4) a").click()
        assert page.locator("#finding").get_attribute("data-finding") == finding_id
        page.select_option("#act select[name='action']", "dismiss")
        assert page.locator("#act input[name='owner']").is_hidden()
        # A dismissal without a reason is refused and the form points at the field.
        page.click("#act button[type='submit']")
        page.wait_for_selector("#act-error:not([hidden])")
        assert "reason" in page.locator("#act-error").inner_text()
        assert page.locator("#act label.invalid select[name='reason']").count() == 1
        # Chromium reports the refused request (400) on the console: that one is expected, nothing else.
        assert [e for e in errors if "status of 400" not in e] == [] and len(errors) == 1, errors
        errors.clear()
        page.select_option("#act select[name='reason']", "false positive")
        page.fill("#act input[name='comment']", "payer confirmed the units")
        with page.expect_navigation():
            page.click("#act button[type='submit']")
        assert page.locator("#status").inner_text().startswith("dismissed")
        assert page.locator("#trail td.after", has_text="false positive").count() == 1

        # It has left the open list ...
        page.goto(base + f"/queues/coding?rule={rule}")
        assert page.locator(f"tr[data-finding='{finding_id}']").count() == 0
        assert page.locator("#total").get_attribute("data-total") == str(expected - 1)
        # ... and the CLI's audit trail shows the web change, by the OS user (loopback: no login).
        trail = subprocess.run(
            [str(BIN), "queue", "history", finding_id, "--out", str(store)], capture_output=True, text=True, timeout=120
        )
        assert trail.returncode == 0, trail.stderr
        assert re.search(rf"{getpass.getuser()} via web  status: (new|open) -> dismissed", trail.stdout), trail.stdout
        assert "reason: (none) -> false positive" in trail.stdout

        # A bulk action on the filtered selection, with a confirmation that states the count.
        page.goto(base + "/queues/coding")
        open_now = int(page.locator("#total").get_attribute("data-total"))
        page.select_option("#bulk select[name='action']", "assign")
        page.fill("#bulk input[name='owner']", "alex")
        with page.expect_navigation():
            page.click("#bulk-submit")
        assert page.locator("#confirm-text").get_attribute("data-count") == str(open_now)
        assert f"on {open_now:,} finding(s)" in page.locator("#confirm-text").inner_text()
        with page.expect_navigation():
            page.click("#confirm")
        assert page.locator(".notice").inner_text() == f"assign: {open_now:,} finding(s) changed"
        owners = page.locator("table.findings tbody tr td:nth-child(11)").all_inner_texts()
        assert owners and set(owners) == {"alex"}

        # The supervisor's dashboard: every chart drawn, the dismissal counted against the rule.
        page.goto(base + "/dashboard")
        for chart in ("backlog", "aging", "closed-per-day", "precision"):
            svg = page.locator(f"svg[data-chart='{chart}']")
            assert svg.count() == 1, chart
            box = svg.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 20, (chart, box)
        assert page.locator("svg[data-chart='backlog'] rect.bar").count() == 3
        assert page.locator(f"#precision tr[data-rule='{rule}'] td.precision").inner_text() == "0%"
        assert page.locator("#backlog td", has_text="alex").count() >= 1
    assert errors == [], errors
    assert outside == [], outside
    # No patient, encounter, administration or finding id in the server's log after these clicks.
    text = log.read_text()
    leaked = sorted(s for s in fixture_identifiers() | set(coding["finding_id"].to_list()) if s in text)
    assert leaked == [] and "?" not in text, leaked
