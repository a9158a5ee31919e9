"""The run's validation pages, rendered here from the Great Expectations results the night computed.

Validation runs once per file (validate.py) in BASIC mode with partial_unexpected_count 0, so a
result holds counts and percentages but no row values; stage_file saves it as JSON under
<out>/runs/<run_id>/gx_results/. `build_data_docs` renders those results into
<out>/runs/<run_id>/validation/: index.html (one line per file) and validations/<file>.html (every
expectation with the distinct values GX checked and failed, and the rows those values stand for;
validate.value_key).

Our own pages rather than GX's Data Docs site: GX builds its index list with JavaScript from public
CDNs, so offline (where PHI-handling machines often are) the index was empty; rendering it also
built a second GX context every night (about 2-3 s). These pages are static HTML with inline CSS,
like report.html, and show only counts, never a value from a row.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import shutil
from pathlib import Path

from b12pipeline.paths import OutputLayout

RESULTS_DIR = "gx_results"
SITE_DIR = "validation"
PAGES_DIR = "validations"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 70rem; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .6rem; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.failed { color: #c0392b; font-weight: bold; } .passed { color: #1e8449; }
"""


def validation_result_path(layout: OutputLayout, run_id: str, file_key: str) -> Path:
    return layout.run_dir(run_id) / RESULTS_DIR / f"{file_key}.json"


def docs_index(layout: OutputLayout, run_id: str) -> Path:
    return layout.run_dir(run_id) / SITE_DIR / "index.html"


def build_data_docs(out: Path | str, run_id: str, run_time: dt.datetime, suite_path: Path | None = None) -> Path | None:
    """Render the run's saved validation results into <run>/validation/; returns index.html (None: no results).

    `suite_path` is accepted for callers of the earlier GX-rendered site; the results name their suite."""
    layout = OutputLayout(Path(out))
    results = sorted((layout.run_dir(run_id) / RESULTS_DIR).glob("*.json"))
    if not results:
        return None
    site = layout.run_dir(run_id) / SITE_DIR
    shutil.rmtree(site, ignore_errors=True)  # a re-run of the same run id must not keep the earlier pages
    (site / PAGES_DIR).mkdir(parents=True)
    summaries = []
    for path in results:
        result = json.loads(path.read_text())
        _write(site / PAGES_DIR / f"{path.stem}.html", file_page(path.stem, result, run_id))
        summaries.append((path.stem, result))
    index = site / "index.html"
    _write(index, index_page(summaries, run_id, run_time))
    return index


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!doctype html>",
            "<html lang='en'><head><meta charset='utf-8'>",
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
            *body,
            "</body></html>",
        ]
    )


def _rows_checked(result: dict) -> int:
    """validate.py records the file's B12 rows beside GX's results (GX counts distinct values)."""
    return int(result.get("rows_checked") or 0)


def _status(success: bool) -> str:
    return "<span class='passed'>passed</span>" if success else "<span class='failed'>failed</span>"


def index_page(summaries: list[tuple[str, dict]], run_id: str, run_time: dt.datetime) -> str:
    e = html.escape
    suites = sorted({str(r.get("suite_name", "")) for _, r in summaries})
    body = [
        f"<h1>Validation, run {e(run_id)}</h1>",
        f"<p>Expectation suite <b>{e(', '.join(suites))}</b> on the B12 rows of each file; "
        f"validated {e(run_time.isoformat(timespec='seconds'))}. Counts only: no value from any row.</p>",
        "<table data-table='validation-results'><thead><tr><th>file</th><th>result</th><th>rows checked</th>"
        "<th>expectations</th><th>passed</th><th>failed</th><th>success</th></tr></thead><tbody>",
    ]
    for key, result in summaries:
        s = result.get("statistics", {})
        body.append(
            f"<tr><td><a href='{PAGES_DIR}/{e(key)}.html'>{e(key)}</a></td>"
            f"<td>{_status(bool(result.get('success')))}</td><td class='n'>{_rows_checked(result):,}</td>"
            f"<td class='n'>{int(s.get('evaluated_expectations', 0)):,}</td>"
            f"<td class='n'>{int(s.get('successful_expectations', 0)):,}</td>"
            f"<td class='n'>{int(s.get('unsuccessful_expectations', 0)):,}</td>"
            f"<td class='n'>{float(s.get('success_percent') or 0):.1f}%</td></tr>"
        )
    body += ["</tbody></table>", "<p><a href='../report.html'>Run report</a></p>"]
    return _page(f"b12pipeline validation {run_id}", body)


def file_page(key: str, result: dict, run_id: str) -> str:
    e = html.escape
    body = [
        f"<h1>Validation of {e(key)}</h1>",
        f"<p>Run {e(run_id)}, suite <b>{e(str(result.get('suite_name', '')))}</b>: "
        f"{_status(bool(result.get('success')))}, {_rows_checked(result):,} B12 rows checked.</p>",
        "<p>GX checks each column's distinct values (a row's verdict depends only on its cell), or one "
        "value per length for a column checked only for presence and length; a row fails where its cell "
        "is a failing value (or has a failing value's length).</p>",
        "<table data-table='expectations'><thead><tr><th>expectation</th><th>column</th><th>what it means</th>"
        "<th>result</th><th>values checked</th><th>values failing</th><th>rows failing</th></tr></thead><tbody>",
    ]
    rows_failing = result.get("rows_failing") or {}
    for r in result.get("results", []):
        cfg, res = r.get("expectation_config") or {}, r.get("result") or {}
        column = str((cfg.get("kwargs") or {}).get("column", ""))
        name = f"{cfg.get('type', '')}({column})"
        body.append(
            f"<tr><td>{e(str(cfg.get('type', '')))}</td><td>{e(column)}</td>"
            f"<td>{e(str((cfg.get('meta') or {}).get('reason', '')))}</td><td>{_status(bool(r.get('success')))}</td>"
            f"<td class='n'>{int(res.get('element_count') or 0):,}</td>"
            f"<td class='n'>{int(res.get('unexpected_count') or 0):,}</td>"
            f"<td class='n'>{int(rows_failing.get(name) or 0):,}</td></tr>"
        )
    body += ["</tbody></table>", "<p><a href='../index.html'>All files of this run</a></p>"]
    return _page(f"b12pipeline validation {key}", body)
