"""The run report: one static HTML page per run, <out>/runs/<run_id>/report.html, for IT and managers.

Self-contained (inline CSS, charts as inline SVG built here, no JavaScript, no network), so it opens
from a file share or an e-mail attachment. Counts only: it is built from manifest.json files and
from findings grouped by rule, queue, severity, place of service and ordering provider NPI; no
patient, encounter, administration or order id is ever put on the page (a test scans for them).
Provider NPIs are public identifiers of clinicians (the NPPES registry), not patient PHI.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path

import polars as pl

from b12pipeline.engine.rulefile import QUEUES, SEVERITIES
from b12pipeline.files import write_text_atomic
from b12pipeline.history import history_paths
from b12pipeline.paths import OutputLayout
from b12pipeline.queues import PART_NAME, partition_dir, scan_partitions

TREND_NIGHTS = 14
TOP_N = 10
SEVERITY_COLOURS = {"error": "#c0392b", "warning": "#d68910", "info": "#2471a3"}
QUEUE_COLOURS = {"coding": "#1f618d", "medical_necessity": "#7d3c98", "documentation": "#117a65"}
BAR_COLOUR = "#34495e"
# CMS place-of-service codes a B12 injection is commonly given in (labels only; unknown codes show as is).
PLACE_OF_SERVICE = {
    "11": "office",
    "12": "home",
    "19": "off-campus outpatient hospital",
    "21": "inpatient hospital",
    "22": "on-campus outpatient hospital",
    "23": "emergency room",
    "31": "skilled nursing facility",
    "32": "nursing facility",
    "49": "independent clinic",
    "50": "federally qualified health center",
    "71": "public health clinic",
    "72": "rural health clinic",
}


def write_run_report(out: Path | str, run_id: str, trend_nights: int = TREND_NIGHTS) -> Path:
    """Build report.html for `run_id` from its manifest, earlier manifests and the queues."""
    layout = OutputLayout(Path(out))
    manifest = json.loads((layout.run_dir(run_id) / "manifest.json").read_text())
    dates = [dt.date.fromisoformat(d) for d in manifest.get("dates_evaluated", [])]
    page = render_report(
        manifest,
        recent_runs(layout, manifest, trend_nights),
        findings_by_origin(layout, dates),
        rule_titles(manifest.get("rules_dir") or None),
    )
    return write_text_atomic(layout.run_dir(run_id) / "report.html", page)


def recent_runs(layout: OutputLayout, manifest: dict, nights: int) -> list[dict]:
    """The latest night run of each of the last `nights` nights up to this one (this run included)."""
    latest: dict[str, dict] = {}
    for path in layout.runs.glob("*/manifest.json"):
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a run still being written, or a damaged one: the trend simply skips it
        if m.get("kind") != manifest["kind"] or m.get("night", "") > manifest["night"]:
            continue
        prior = latest.get(m["night"])
        if prior is None or m.get("ended_at", "") >= prior.get("ended_at", ""):
            latest[m["night"]] = m
    latest[manifest["night"]] = manifest
    return [latest[n] for n in sorted(latest)[-nights:]]


def findings_by_origin(layout: OutputLayout, dates: list[dt.date]) -> dict[str, list[tuple[str, int]]]:
    """Findings on `dates` per place of service and per ordering provider NPI (top TOP_N each).

    The findings carry no department column: the administration's place_of_service and
    ordering_provider_npi come from history, joined on admin_id here and aggregated away at once.
    """
    empty: dict[str, list[tuple[str, int]]] = {"place_of_service": [], "ordering_provider_npi": []}
    if not dates:
        return empty
    parts = [p for q in QUEUES for d in dates if (p := partition_dir(layout.queues, q, d) / PART_NAME).exists()]
    found = (
        scan_partitions(parts, {"admin_id": pl.String}).collect()
        if parts
        else pl.DataFrame(schema={"admin_id": pl.String})
    )
    first, last = min(dates), max(dates)
    paths = [p for day, p in sorted(history_paths(layout.history).items()) if first <= day <= last]
    if found.height == 0 or not paths:
        return empty
    # Only the columns aggregated here (a partition written before one existed reads it as empty).
    origin = (
        scan_partitions(paths, {"admin_id": pl.String, **{c: pl.String for c in empty}})
        .filter(pl.col("admin_id").is_in(found["admin_id"].unique().implode()))
        .collect()
        .unique("admin_id", keep="last")
    )
    joined = found.join(origin, on="admin_id", how="left")
    result = {}
    for col in empty:
        counts = (
            joined.group_by(pl.col(col).fill_null("(not recorded)"))
            .len()
            .sort(["len", col], descending=[True, False])
            .head(TOP_N)
        )
        result[col] = [(str(k), int(n)) for k, n in counts.iter_rows()]
    return result


# ---------------------------------------------------------------------------------------------- page


def render_report(
    manifest: dict, trend: list[dict], origin: dict[str, list[tuple[str, int]]], titles: dict[str, str] | None = None
) -> str:
    t, f = manifest["totals"], manifest["findings"]
    e = html.escape
    cards = [
        ("files", t["files"]),
        ("files rejected", t["files_rejected"]),
        ("rows read", t["rows_read"]),
        ("B12 rows in scope", t["in_scope"]),
        ("quarantined", t["quarantined"]),
        ("findings", f["total"]),
    ]
    pos = [(f"{code} {PLACE_OF_SERVICE.get(code, '')}".strip(), n) for code, n in origin["place_of_service"]]
    links = [
        ("Validation results per file (Great Expectations)", "validation/index.html"),
        ("Validation counts (JSON)", "validation.json"),
        ("Run manifest (JSON)", "manifest.json"),
    ]
    sections = [
        f"<h1>B12 {e(manifest['kind'])} {e(manifest['night'])}</h1>",
        f"<p class='meta'>run <code>{e(manifest['run_id'])}</code> &middot; ruleset "
        f"<code>{e(manifest['ruleset_version'])}</code> &middot; b12pipeline {e(manifest['software_version'])}"
        f" &middot; {e(manifest['started_at'])} &ndash; {e(manifest['ended_at'])}</p>",
        "<div class='cards'>"
        + "".join(
            f"<div class='card'><div class='n'>{n:,}</div><div class='l'>{e(label)}</div></div>" for label, n in cards
        )
        + "</div>",
        "<nav>" + " &middot; ".join(f"<a href='{e(href)}'>{e(text)}</a>" for text, href in links) + "</nav>",
        *backlog_section(manifest.get("worklog", {}).get("snapshot") or {}, manifest.get("worklog", {})),
        "<h2>Findings on the dates this run evaluated</h2>",
        f"<p>Dates of service evaluated: {e(', '.join(manifest.get('dates_evaluated', [])) or 'none')}.</p>",
        "<div class='grid'>",
        bar_chart("per-queue", "By work queue", [(q, f["per_queue"].get(q, 0)) for q in QUEUES], QUEUE_COLOURS),
        bar_chart(
            "per-severity", "By severity", [(s, f["per_severity"].get(s, 0)) for s in SEVERITIES], SEVERITY_COLOURS
        ),
        bar_chart("per-rule", "By rule", sorted(f["per_rule"].items(), key=lambda kv: (-kv[1], kv[0]))),
        "</div>",
        rules_table(f["per_rule"], titles or {}),
        f"<h2>Trend over the last {len(trend)} night(s)</h2>",
        trend_chart("trend", trend),
        trend_table(trend),
        "<h2>Where findings come from</h2>",
        "<p class='note'>The extract has no department column: place of service stands in for it. "
        "Ordering providers are shown by NPI (a public provider identifier, not patient information).</p>",
        "<div class='grid'>",
        bar_chart("top-place-of-service", "Top places of service", pos),
        bar_chart("top-ordering-provider", "Top ordering providers (NPI)", origin["ordering_provider_npi"]),
        "</div>",
        "<h2>Input files</h2>",
        files_table(manifest["inputs"]),
    ]
    return PAGE.format(
        title=e(f"b12pipeline {manifest['kind']} {manifest['night']}"), css=CSS, body="\n".join(sections)
    )


def backlog_section(snapshot: dict, changes: dict) -> list[str]:
    """The coders' open backlog per queue and its age, new tonight, closed since the previous night,
    and each rule's effectiveness: counts from the worklog's nightly snapshot (never a comment or id)."""
    if not snapshot:
        return []
    e = html.escape
    backlog, closed = snapshot["backlog"], snapshot["closed_since_previous_night"]
    cards = [
        ("open work", sum(q["open"] for q in backlog.values())),
        ("new tonight", sum(q["new"] for q in backlog.values())),
        ("reopened tonight", changes.get("reopened", 0)),
        ("closed since the previous night", sum(closed.values())),
        ("resolved by tonight's data", changes.get("resolved", 0)),
    ]
    buckets = list(next(iter(backlog.values()))["age_days"]) if backlog else []
    ages = [(b, sum(q["age_days"][b] for q in backlog.values())) for b in buckets]
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "queue",
            "open",
            "new",
            "reopened",
            "in progress",
            "deferred",
            *[f"{b} days" for b in buckets],
            "oldest (days)",
        )
    )
    deferred = snapshot.get("deferred_not_due", {})
    rows = "".join(
        f"<tr><td>{e(name)}</td>"
        + "".join(f"<td class='num'>{q[k]:,}</td>" for k in ("open", "new", "reopened", "in_progress"))
        + f"<td class='num'>{deferred.get(name, 0):,}</td>"
        + "".join(f"<td class='num'>{q['age_days'][b]:,}</td>" for b in buckets)
        + f"<td class='num'>{q['oldest_days']:,}</td></tr>"
        for name, q in backlog.items()
    )
    return [
        "<section id='backlog'>",
        f"<h2>Coders' backlog as of {e(snapshot['as_of'])}</h2>",
        "<div class='cards'>"
        + "".join(
            f"<div class='card'><div class='n'>{n:,}</div><div class='l'>{e(label)}</div></div>" for label, n in cards
        )
        + "</div>",
        "<p class='note'>Open work: new, open, reopened, in progress, and deferred findings whose date has come "
        "(closed since the previous night: "
        + ", ".join(f"{k} {closed.get(k, 0):,}" for k in ("fixed", "dismissed", "resolved"))
        + ").</p>",
        f"<table class='backlog'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>",
        "<div class='grid'>",
        bar_chart("backlog-queue", "Open work by queue", [(q, v["open"]) for q, v in backlog.items()], QUEUE_COLOURS),
        bar_chart("backlog-age", "Open work by age (days since first seen)", ages),
        "</div>",
        "<h2>Rule effectiveness</h2>",
        rule_effectiveness_table(snapshot.get("rules", [])),
        "</section>",
    ]


def rule_effectiveness_table(rules: list[dict]) -> str:
    e = html.escape
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "rule",
            "raised",
            "open",
            "fixed",
            "dismissed",
            "dismissed by reason",
            "auto-resolved",
            "median days to close",
            "precision",
        )
    )
    rows = "".join(
        f"<tr><td>{e(r['rule_id'])}</td>"
        + "".join(f"<td class='num'>{r[k]:,}</td>" for k in ("raised", "open", "fixed", "dismissed"))
        + f"<td>{e(r['dismissed_by_reason'])}</td><td class='num'>{r['auto_resolved']:,}</td>"
        + f"<td class='num'>{_maybe(r['median_days_to_close'], '{:g}')}</td>"
        + f"<td class='num'>{_maybe(r['precision'], '{:.0%}')}</td></tr>"
        for r in rules
    )
    note = (
        "<p class='note'>Precision = fixed / (fixed + dismissed as false positive): how often a coder agreed the "
        "rule found a real problem; blank until a coder decided one.</p>"
    )
    return f"{note}<table class='rules'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _maybe(value, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def files_table(inputs: list[dict]) -> str:
    e = html.escape
    head = "".join(
        f"<th>{h}</th>" for h in ("file", "status", "rows read", "in scope", "out of scope", "quarantined", "note")
    )
    rows = []
    for i in inputs:
        cls = "bad" if i["status"] == "rejected" else "ok"
        rows.append(
            f"<tr><td>{e(i['file'])}</td><td class='{cls}'>{e(i['status'])}</td>"
            + "".join(
                f"<td class='num'>{i.get(k, 0):,}</td>"
                for k in ("rows_read", "in_scope", "out_of_scope", "quarantined")
            )
            + f"<td>{e(i.get('error', ''))}</td></tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def trend_table(trend: list[dict]) -> str:
    """Per night: rows, findings per queue, findings per 1,000 B12 administrations (comparable across
    nights of different sizes), and the coders' open backlog after that night (from the worklog)."""
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "night",
            "rows read",
            "quarantined",
            *QUEUES,
            "total findings",
            "per 1,000 administrations",
            "open backlog",
        )
    )
    rows = "".join(
        f"<tr><td>{html.escape(m['night'])}</td><td class='num'>{m['totals']['rows_read']:,}</td>"
        f"<td class='num'>{m['totals']['quarantined']:,}</td>"
        + "".join(f"<td class='num'>{m['findings']['per_queue'].get(q, 0):,}</td>" for q in QUEUES)
        + f"<td class='num'>{m['findings']['total']:,}</td>"
        + f"<td class='num'>{_per_thousand(m)}</td><td class='num'>{_open_backlog(m)}</td></tr>"
        for m in trend
    )
    return f"<table data-table='trend'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _per_thousand(manifest: dict) -> str:
    administrations = manifest["totals"].get("in_scope") or 0
    return f"{1000 * manifest['findings']['total'] / administrations:,.1f}" if administrations else "-"


def _open_backlog(manifest: dict) -> str:
    backlog = ((manifest.get("worklog") or {}).get("snapshot") or {}).get("backlog") or {}
    return f"{sum(q.get('open', 0) for q in backlog.values()):,}" if backlog else "-"


def rules_table(per_rule: dict[str, int], titles: dict[str, str]) -> str:
    """The rules that fired, by count, each named by its title (compliance reads titles, not ids)."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(rule)}</td><td>{e(titles.get(rule, ''))}</td><td class='num'>{n:,}</td></tr>"
        for rule, n in sorted(per_rule.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    head = "<tr><th>rule</th><th>title</th><th>findings</th></tr>"
    return f"<table data-table='rules'><thead>{head}</thead><tbody>{rows}</tbody></table>"


def rule_titles(rules_dir: str | None) -> dict[str, str]:
    """Rule id -> title of the ruleset the run used (empty when it cannot be read: the ids still show)."""
    from b12pipeline.engine.rulefile import RuleFileError
    from b12pipeline.rulesets import load_ruleset

    try:
        ruleset = load_ruleset(Path(rules_dir) if rules_dir else None)
    except (RuleFileError, OSError, ValueError):
        return {}
    retired = {r.id: r.title for r in ruleset.rules if r.status != "active"}
    return retired | {r.id: r.title for r in ruleset.active}  # the active version's title wins


# ------------------------------------------------------------------------------------------ charts


def bar_chart(chart_id: str, title: str, items: list[tuple[str, int]], colours: dict[str, str] | None = None) -> str:
    """Horizontal bars, one per item, as inline SVG (a <title> on each bar gives the exact count)."""
    e = html.escape
    label_w, bar_w, row_h, pad = 230, 300, 26, 8
    height = pad * 2 + row_h * max(len(items), 1)
    top = max((n for _, n in items), default=0) or 1
    parts = [
        f"<figure class='chart'><figcaption>{e(title)}</figcaption>",
        f"<svg class='chart' data-chart='{e(chart_id)}' role='img' "
        f"aria-label='{e(title)}' width='{label_w + bar_w + 70}' height='{height}' "
        f"viewBox='0 0 {label_w + bar_w + 70} {height}'>",
    ]
    if not items:
        parts.append(f"<text x='{pad}' y='{pad + 17}' class='empty'>none</text>")
    for i, (label, n) in enumerate(items):
        y = pad + i * row_h
        w = round(bar_w * n / top, 1)
        colour = (colours or {}).get(label, BAR_COLOUR)
        parts.append(
            f"<text x='{label_w - 6}' y='{y + 17}' text-anchor='end'>{e(str(label))}</text>"
            f"<rect class='bar' x='{label_w}' y='{y + 4}' width='{w}' height='{row_h - 8}' fill='{colour}'>"
            f"<title>{e(str(label))}: {n:,}</title></rect>"
            f"<text x='{label_w + w + 6}' y='{y + 17}'>{n:,}</text>"
        )
    parts.append("</svg></figure>")
    return "".join(parts)


def trend_chart(chart_id: str, trend: list[dict]) -> str:
    """One line per queue over the nights of `trend` (inline SVG, points titled with the counts)."""
    e = html.escape
    width, height, left, bottom, top_pad, right = 800, 260, 50, 40, 16, 180
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    series = {q: [m["findings"]["per_queue"].get(q, 0) for m in trend] for q in QUEUES}
    peak = max([v for vals in series.values() for v in vals] + [1])
    step = plot_w / max(len(trend) - 1, 1)

    def xy(i: int, v: int) -> tuple[float, float]:
        x = left + (i * step if len(trend) > 1 else plot_w / 2)
        return round(x, 1), round(top_pad + plot_h - plot_h * v / peak, 1)

    parts = [
        "<figure class='chart wide'><figcaption>Findings per queue, per night</figcaption>",
        f"<svg class='chart' data-chart='{e(chart_id)}' role='img' "
        f"aria-label='Findings per queue per night' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}'>",
        f"<line x1='{left}' y1='{top_pad + plot_h}' x2='{left + plot_w}' y2='{top_pad + plot_h}' class='axis'/>",
        f"<line x1='{left}' y1='{top_pad}' x2='{left}' y2='{top_pad + plot_h}' class='axis'/>",
        f"<text x='{left - 6}' y='{top_pad + 5}' text-anchor='end'>{peak:,}</text>",
        f"<text x='{left - 6}' y='{top_pad + plot_h}' text-anchor='end'>0</text>",
    ]
    for i, m in enumerate(trend):
        x, _ = xy(i, 0)
        if len(trend) <= 16 or i % max(len(trend) // 8, 1) == 0:
            parts.append(
                f"<text x='{x}' y='{height - bottom + 18}' text-anchor='middle' class='small'>"
                f"{e(m['night'][5:])}</text>"
            )
    for k, (queue, values) in enumerate(series.items()):
        colour = QUEUE_COLOURS.get(queue, BAR_COLOUR)
        points = [xy(i, v) for i, v in enumerate(values)]
        if len(points) > 1:
            parts.append(
                f"<polyline class='series' fill='none' stroke='{colour}' stroke-width='2' points='"
                + " ".join(f"{x},{y}" for x, y in points)
                + "'/>"
            )
        for (x, y), m, v in zip(points, trend, values, strict=True):
            parts.append(
                f"<circle cx='{x}' cy='{y}' r='3.5' fill='{colour}'>"
                f"<title>{e(queue)} {e(m['night'])}: {v:,}</title></circle>"
            )
        ly = top_pad + 14 + k * 20
        parts.append(
            f"<rect x='{left + plot_w + 16}' y='{ly - 10}' width='12' height='12' fill='{colour}'/>"
            f"<text x='{left + plot_w + 34}' y='{ly}'>{e(queue)}</text>"
        )
    parts.append("</svg></figure>")
    return "".join(parts)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1150px;
       color: #1c2833; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #d5d8dc; padding-bottom: .3rem; }
.meta, .note { color: #566573; } code { background: #f4f6f7; padding: 0 .25rem; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; }
.card { border: 1px solid #d5d8dc; border-radius: 6px; padding: .6rem 1rem; min-width: 8rem; }
.card .n { font-size: 1.6rem; font-weight: 600; } .card .l { color: #566573; font-size: .85rem; }
nav a { color: #1f618d; }
.grid { display: flex; flex-wrap: wrap; gap: 1.5rem; }
figure.chart { margin: 0; } figcaption { font-weight: 600; margin-bottom: .3rem; }
svg.chart text { font-size: 13px; fill: #1c2833; } svg.chart text.small { font-size: 11px; }
svg.chart .axis { stroke: #aab7b8; } svg.chart text.empty { fill: #808b96; }
table { border-collapse: collapse; margin: .8rem 0; } th, td { border: 1px solid #d5d8dc; padding: .3rem .6rem; }
th { background: #f4f6f7; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.bad { color: #c0392b; font-weight: 600; } td.ok { color: #117a65; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{body}
<footer class="note"><p>Counts only: this report holds no patient, encounter or administration identifiers.
Coders open their work with <code>b12pipeline queue export</code>.</p></footer>
</body>
</html>
"""
