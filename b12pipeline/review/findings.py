"""The queues as the review app reads them: one cached frame, filters, sorting, paging, context.

Every page asks `QueueSnapshot.frame()`: the Parquet partitions are stat-ed on each call (cheap)
and re-read only when one changed (a night ran), so filtering and paging 100k findings is an
in-memory Polars query of a few milliseconds. People's decisions (status, owner, ...) come from the
worklog and are joined by the caller (`with_work`) when either side changed.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from b12pipeline.engine.rulefile import QUEUES, SEVERITIES, Rule, Ruleset
from b12pipeline.history import read_history
from b12pipeline.paths import OutputLayout
from b12pipeline.queues import read_queue

PAGE_SIZES = (25, 50, 100, 200, 500)
DEFAULT_PAGE_SIZE = 50
# The rows are kept in this order; another sort is one stable sort on its own key (ties keep this order).
DEFAULT_ORDER = ("service_date", "severity_rank", "rule_id", "finding_id")
SORTS = ("service_date", "severity", "rule_id", "status", "owner", "payer_type", "first_seen")
# Columns of the administration a coder decides with, in the order the finding page shows them.
ADMINISTRATION_FIELDS = (
    "admin_time",
    "mar_action",
    "medication_name",
    "dose_value",
    "dose_unit",
    "concentration_mcg_per_ml",
    "ndc",
    "rxnorm_code",
    "container_type",
    "container_volume_ml",
    "route",
    "site",
    "lot_number",
    "expiration_date",
    "waste_mcg",
    "administered_by",
    "ordering_provider_npi",
    "diagnosis_codes",
    "place_of_service",
)
BILLING_FIELDS = (
    "payer_type",
    "claim_type",
    "charge_hcpcs",
    "charge_units",
    "charge_modifiers",
    "charge_ndc_qty",
    "charge_ndc_unit",
    "admin_cpt",
    "same_day_em_codes",
)


class FilterError(ValueError):
    """A query parameter that cannot be used; `field` names it for the form."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class Filters:
    queue: str
    status: tuple[str, ...] = ()  # empty: the open work (see OPEN_WORK)
    owner: str | None = None
    severity: str | None = None
    rule: str | None = None
    payer: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    new: bool = False
    sort: str = "service_date"
    descending: bool = False
    page: int = 1
    size: int = DEFAULT_PAGE_SIZE

    def query_args(self, **changes) -> dict[str, str]:
        """The filters as query parameters (for links that keep them), with `changes` applied."""
        args = {
            "status": ",".join(self.status),
            "owner": self.owner or "",
            "severity": self.severity or "",
            "rule": self.rule or "",
            "payer": self.payer or "",
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
            "new": "1" if self.new else "",
            "sort": self.sort,
            "dir": "desc" if self.descending else "asc",
            "page": str(self.page),
            "size": str(self.size),
        }
        args.update({k: str(v) for k, v in changes.items()})
        return {k: v for k, v in args.items() if v not in ("", None)}


def parse_filters(queue: str, params, statuses: tuple[str, ...]) -> Filters:
    """Filters from query parameters; FilterError names the first field that cannot be read."""
    if queue not in QUEUES:
        raise FilterError("queue", f"unknown queue; queues are {', '.join(QUEUES)}")

    def text(name: str) -> str | None:
        value = (params.get(name) or "").strip()
        return value or None

    def date(name: str) -> dt.date | None:
        value = text(name)
        if value is None:
            return None
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise FilterError(name, "not a date (YYYY-MM-DD)") from None

    def number(name: str, default: int) -> int:
        value = text(name)
        if value is None:
            return default
        if not value.isdigit() or int(value) < 1:
            raise FilterError(name, "not a positive whole number")
        return int(value)

    status = tuple(s for s in (text("status") or "").split(",") if s)
    unknown = [s for s in status if s not in (*statuses, "all")]
    if unknown:
        raise FilterError("status", f"unknown status; statuses are {', '.join(statuses)}")
    severity = text("severity")
    if severity and severity not in SEVERITIES:
        raise FilterError("severity", f"unknown severity; severities are {', '.join(SEVERITIES)}")
    sort = text("sort") or "service_date"
    if sort not in SORTS:
        raise FilterError("sort", f"cannot sort by that; choose one of {', '.join(SORTS)}")
    direction = text("dir") or "asc"
    if direction not in ("asc", "desc"):
        raise FilterError("dir", "asc or desc")
    size = number("size", DEFAULT_PAGE_SIZE)
    if size not in PAGE_SIZES:
        raise FilterError("size", f"page size is one of {', '.join(map(str, PAGE_SIZES))}")
    date_from, date_to = date("from"), date("to")
    if date_from and date_to and date_from > date_to:
        raise FilterError("to", "ends before 'from'")
    rule = text("rule")
    return Filters(
        queue=queue,
        status=status,
        owner=text("owner"),
        severity=severity,
        rule=rule.upper() if rule else None,
        payer=text("payer"),
        date_from=date_from,
        date_to=date_to,
        new=(text("new") or "") in ("1", "true", "on", "yes"),
        sort=sort,
        descending=direction == "desc",
        page=number("page", 1),
        size=size,
    )


@dataclass
class QueueSnapshot:
    """All findings of an output root, re-read only when a queue or history partition changes."""

    out: Path
    _key: tuple = ()
    _frame: pl.DataFrame | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.out)

    def _signature(self) -> tuple:
        paths = sorted(self.layout.queues.glob("*/service_date=*/*.parquet"))
        stamp = []
        for p in paths:
            try:
                st = p.stat()
            except FileNotFoundError:  # replaced while we looked: the next call sees the new file
                continue
            stamp.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(stamp)

    def frame(self) -> pl.DataFrame:
        key = self._signature()
        with self._lock:
            if self._frame is None or key != self._key:
                self._frame, self._key = self._load(), key
            return self._frame

    def _load(self) -> pl.DataFrame:
        """The findings in the pages' default order, once: a request then only filters and slices."""
        return (
            read_queue(self.layout.queues)
            .with_columns(
                severity_rank=pl.col("severity").replace_strict(
                    {s: i for i, s in enumerate(SEVERITIES)}, default=len(SEVERITIES), return_dtype=pl.Int8
                )
            )
            .sort(DEFAULT_ORDER)
        )


def apply_filters(frame: pl.DataFrame, f: Filters, as_of: dt.date) -> pl.DataFrame:
    """The rows of `frame` (findings joined with their work state) that match `f`.

    Status, owner, severity, payer, rule and "new" mean what they mean for `queue show`
    (worklog.view.filter_work, the open work by default); the date range is the web's own.
    """
    from b12pipeline.worklog.view import filter_work

    wanted = {
        "queue": f.queue,
        "status": "|".join(f.status) or None,
        "owner": f.owner,
        "severity": f.severity,
        "payer": f.payer,
        "rule": f.rule,
        "new": f.new,
    }
    selected = filter_work(frame, wanted, as_of=as_of)
    if f.date_from:
        selected = selected.filter(pl.col("service_date") >= f.date_from)
    if f.date_to:
        selected = selected.filter(pl.col("service_date") <= f.date_to)
    return selected


def sort_and_page(selected: pl.DataFrame, f: Filters) -> tuple[pl.DataFrame, int]:
    """One page of `selected` (in DEFAULT_ORDER) in the requested order, and the page actually shown."""
    pages = max((selected.height + f.size - 1) // f.size, 1)
    page = min(f.page, pages)
    if f.sort != "service_date" or f.descending:
        key = "severity_rank" if f.sort == "severity" else f.sort
        selected = selected.sort(key, descending=f.descending, nulls_last=True, maintain_order=True)
    return selected.slice((page - 1) * f.size, f.size), page


def rule_for(ruleset: Ruleset, rule_id: str, version: str) -> Rule | None:
    """The rule file that made a finding: same id and version (else the newest of that id)."""
    candidates = ruleset.by_id(rule_id)
    for rule in candidates:
        if str(rule.version) == str(version):
            return rule
    return max(candidates, key=lambda r: str(r.version), default=None)


def administration(layout: OutputLayout, admin_id: str, service_date: dt.date) -> dict[str, str]:
    """The canonical row of one administration from history ({} when history no longer has it)."""
    rows = read_history(layout.history, service_date, service_date)
    if rows is None:
        return {}
    match = rows.filter(pl.col("admin_id") == admin_id)
    return match.row(-1, named=True) if match.height else {}
