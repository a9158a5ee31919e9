"""Routes of the review app: queue pages, a finding's page, the dashboard, login, and the JSON API.

`build_app(settings)` returns the ASGI application uvicorn serves: the FastAPI routes wrapped in
`SecurityLayer` (middleware.py), which every request passes first.
"""

from __future__ import annotations

import datetime as dt
import getpass
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import jinja2
import polars as pl
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from b12pipeline.engine.rulefile import QUEUES, SEVERITIES
from b12pipeline.review import dashboard
from b12pipeline.review import findings as fq
from b12pipeline.review.accounts import Authenticator, User
from b12pipeline.review.middleware import CSRF_FIELD, Policy, SecurityLayer, route_templates, session_cookie
from b12pipeline.review.sessions import SessionStore
from b12pipeline.review.work import ChangeError, WorkView, action_body, parse_change, with_work
from b12pipeline.rulesets import load_ruleset
from b12pipeline.worklog.models import OPEN_WORK
from b12pipeline.worklog.view import UNTRACKED

HERE = Path(__file__).resolve().parent
QUEUE_TITLES = {"coding": "Coding", "medical_necessity": "Medical necessity", "documentation": "Documentation"}
API_COLUMNS = (
    "finding_id",
    "queue",
    "service_date",
    "severity",
    "rule_id",
    "rule_version",
    "message",
    "expected",
    "actual",
    "patient_id",
    "encounter_id",
    "admin_id",
    "payer_type",
    "status",
    "owner",
    "reason",
    "comment",
    "deferred_until",
    "first_seen",
    "is_new",
    "version",
)
LOGIN_FAILURES_ALLOWED, LOGIN_LOCK_SECONDS = 5, 15 * 60
BULK_CODER_LIMIT = 100  # a bulk action on more findings is a supervisor's


@dataclass
class Settings:
    out: Path
    mode: str  # local | password | proxy (accounts.check_bind)
    users_file: Path
    proxy_header: str | None = None
    trusted_proxies: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    rules_dir: Path | None = None
    local_user: str = field(default_factory=getpass.getuser)
    bulk_limit: int = BULK_CODER_LIMIT
    sessions: SessionStore = field(default_factory=SessionStore)


class Review:
    """What every route needs: the queues, the worklog, the rules and the page templates."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.snapshot = fq.QueueSnapshot(settings.out)
        self.work = WorkView(settings.out, settings.rules_dir)
        self.ruleset = load_ruleset(settings.rules_dir)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.globals.update(queues=QUEUES, queue_titles=QUEUE_TITLES, urlencode=urlencode)
        self.login_failures: dict[str, list[float]] = {}
        self._joined: tuple | None = None

    def findings(self) -> pl.DataFrame:
        """The queues joined with the worklog, joined again only when either changed."""
        base, states = self.snapshot.frame(), self.work.states()
        cached = self._joined
        if cached is None or cached[0] is not base or cached[1] is not states:
            cached = self._joined = (base, states, with_work(base, states))
        return cached[2]

    def render(self, request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        session = request.state.session
        page = self.templates.get_template(name).render(
            user=session.user if session else None,
            csrf_token=session.csrf if session else "",
            csrf_field=CSRF_FIELD,
            mode=self.settings.mode,
            **context,
        )
        return HTMLResponse(page, status_code=status)

    def counts(self, frame: pl.DataFrame, as_of: dt.date) -> dict[str, dict[str, int]]:
        """Per queue: open work (as `queue show` counts it), new tonight, in progress, deferred (the tabs)."""
        due = (pl.col("status") == "deferred") & (pl.col("deferred_until") <= as_of)
        open_work = pl.col("status").is_in([*OPEN_WORK, UNTRACKED]) | due
        grouped = frame.group_by("queue").agg(
            open_work.fill_null(False).sum().alias("open"),
            (pl.col("status") == "new").sum().alias("new"),
            (pl.col("status") == "in_progress").sum().alias("in_progress"),
            ((pl.col("status") == "deferred") & ~due.fill_null(False)).sum().alias("deferred"),
        )
        by_queue = {r["queue"]: r for r in grouped.iter_rows(named=True)}
        keys = ("open", "new", "in_progress", "deferred")
        return {q: {k: int(by_queue.get(q, {}).get(k, 0) or 0) for k in keys} for q in QUEUES}


def current_user(request: Request) -> User:
    return request.state.session.user


def build_app(settings: Settings):
    review = Review(settings)
    review_auth = Authenticator(settings.users_file)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = review
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def not_found(request: Request, what: str) -> HTMLResponse:
        return review.render(request, "error.html", status=404, title="Not found", message=what)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/")
    def home() -> Response:
        return RedirectResponse("/queues/coding", status_code=303)

    @app.get("/login")
    def login_form(request: Request) -> Response:
        if settings.mode != "password":
            return RedirectResponse("/", status_code=303)
        return review.render(request, "login.html", title="Sign in", error="")

    @app.post("/login")
    async def login(request: Request) -> Response:
        if settings.mode != "password":
            return RedirectResponse("/", status_code=303)
        form = await _form(request)
        name, password = form.get("name", "").strip(), form.get("password", "")
        now = time.monotonic()
        recent = [t for t in review.login_failures.get(name, []) if now - t < LOGIN_LOCK_SECONDS]
        user = None if len(recent) >= LOGIN_FAILURES_ALLOWED else review_auth.verify(name, password)
        if user is None:
            review.login_failures[name] = [*recent, now]
            return review.render(request, "login.html", status=401, title="Sign in", error="Wrong name or password.")
        review.login_failures.pop(name, None)
        # A new token at login: a token planted before the login (session fixation) is worth nothing.
        settings.sessions.drop(request.cookies.get("b12review"))
        session = settings.sessions.create(user)
        response = RedirectResponse("/", status_code=303)
        response.headers.append("set-cookie", session_cookie(session.token, request.url.scheme == "https"))
        return response

    @app.post("/logout")
    def logout(request: Request) -> Response:
        settings.sessions.drop(request.state.session.token)
        response = RedirectResponse("/login" if settings.mode == "password" else "/", status_code=303)
        response.headers.append("set-cookie", session_cookie("", request.url.scheme == "https", clear=True))
        return response

    @app.get("/queues/{queue}")
    def queue_page(request: Request, queue: str) -> Response:
        if queue not in QUEUES:
            return not_found(request, "There is no such queue.")
        frame = review.findings()
        today = dt.date.today()  # the request is the boundary that may read the clock (deferrals due)
        error = None
        try:
            filters = fq.parse_filters(queue, request.query_params, review.work.statuses)
        except fq.FilterError as exc:
            error, filters = exc, fq.Filters(queue=queue)
        selected = fq.apply_filters(frame, filters, today)
        rows, page = fq.sort_and_page(selected, filters)
        in_queue = frame.filter(pl.col("queue") == queue)
        session = request.state.session
        notices, session.flash = session.flash, []
        return review.render(
            request,
            "queue.html",
            status=400 if error else 200,
            title=QUEUE_TITLES[queue],
            queue=queue,
            counts=review.counts(frame, today),
            filters=filters,
            error=error,
            rows=rows.to_dicts(),
            total=selected.height,
            page=page,
            pages=max((selected.height + filters.size - 1) // filters.size, 1),
            page_sizes=fq.PAGE_SIZES,
            statuses=review.work.statuses,
            severities=SEVERITIES,
            rules=sorted(in_queue["rule_id"].unique().to_list()),
            payers=sorted(p for p in in_queue["payer_type"].unique().to_list() if p),
            owners=sorted(o for o in in_queue["owner"].unique().to_list() if o),
            sorts=fq.SORTS,
            reasons=review.work.reasons(),
            notices=notices,
        )

    @app.get("/findings/{finding_id}")
    def finding_page(request: Request, finding_id: str) -> Response:
        frame = review.findings()
        match = frame.filter(pl.col("finding_id") == finding_id)
        if match.height == 0:
            return not_found(request, "There is no finding with that id in these queues.")
        row = match.row(0, named=True)
        related = frame.filter(
            ((pl.col("admin_id") == row["admin_id"]) | (pl.col("encounter_id") == row["encounter_id"]))
            & (pl.col("finding_id") != finding_id)
        ).sort("service_date", "admin_id", "rule_id")
        admin = fq.administration(review.snapshot.layout, row["admin_id"], row["service_date"])
        return review.render(
            request,
            "finding.html",
            title=f"{row['rule_id']} finding",
            f=row,
            rule=fq.rule_for(review.ruleset, row["rule_id"], row["rule_version"]),
            admin_fields=[(k, admin.get(k)) for k in fq.ADMINISTRATION_FIELDS if k in admin],
            billing_fields=[(k, admin.get(k)) for k in fq.BILLING_FIELDS if k in admin],
            related=related.to_dicts(),
            trail=review.work.history(finding_id),
            statuses=review.work.statuses,
            reasons=review.work.reasons(),
        )

    @app.get("/api/findings")
    def api_findings(request: Request) -> Response:
        params = request.query_params
        queue = params.get("queue") or "coding"
        try:
            filters = fq.parse_filters(queue, params, review.work.statuses)
        except fq.FilterError as exc:
            return JSONResponse({"error": exc.message, "field": exc.field}, status_code=400)
        selected = fq.apply_filters(review.findings(), filters, dt.date.today())
        rows, page = fq.sort_and_page(selected, filters)
        return JSONResponse(
            {
                "queue": queue,
                "total": selected.height,
                "page": page,
                "size": filters.size,
                "findings": [_jsonable(r) for r in rows.select(API_COLUMNS).iter_rows(named=True)],
            }
        )

    @app.patch("/api/findings/{finding_id}")
    async def api_change(request: Request, finding_id: str) -> Response:
        if not request.headers.get("content-type", "").startswith("application/json"):
            return JSONResponse({"error": "send JSON (Content-Type: application/json)"}, status_code=415)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body is not a JSON object"}, status_code=400)
        current = review.work.states().filter(pl.col("finding_id") == finding_id)
        if current.height == 0:
            return JSONResponse({"error": "unknown finding id"}, status_code=404)
        expected = request.headers.get("if-match")
        if expected is not None and not expected.strip('"').isdigit():
            return JSONResponse({"error": "If-Match is the finding's version", "field": "If-Match"}, status_code=400)
        revision = int(expected.strip('"')) if expected is not None else None
        try:
            changes = parse_change(body, review.work.reasons())
            if revision is not None and revision != current["version"][0]:
                raise _conflict(review, finding_id, current.row(0, named=True))
            outcome = review.work.change([finding_id], changes, current_user(request).name, revision)
            if outcome.refused:
                now = review.work.states().filter(pl.col("finding_id") == finding_id).row(0, named=True)
                if revision is not None and now["version"] != revision:
                    raise _conflict(review, finding_id, now)
                raise ChangeError(_field_of(outcome.refused[0][1]), outcome.refused[0][1])
        except ChangeError as exc:
            status = 409 if exc.conflict else 400
            return JSONResponse(
                {"error": exc.message, "field": exc.field, "conflict": exc.conflict}, status_code=status
            )
        state = review.work.states().filter(pl.col("finding_id") == finding_id).row(0, named=True)
        return JSONResponse({"finding_id": finding_id, "changed": bool(outcome.changed), **_jsonable(state)})

    @app.post("/queues/{queue}/bulk")
    async def bulk_review(request: Request, queue: str) -> Response:
        return await _bulk(request, queue, apply=False)

    @app.post("/queues/{queue}/bulk/apply")
    async def bulk_apply(request: Request, queue: str) -> Response:
        return await _bulk(request, queue, apply=True)

    async def _bulk(request: Request, queue: str, apply: bool) -> Response:
        if queue not in QUEUES:
            return not_found(request, "There is no such queue.")
        pairs = await _form_pairs(request)
        form = dict(pairs)
        picked = [v for k, v in pairs if k == "finding_id"]
        params = {k[2:]: v for k, v in pairs if k.startswith("f_")}
        user = current_user(request)
        back = f"/queues/{queue}?{urlencode(params)}"
        try:
            filters = fq.parse_filters(queue, params, review.work.statuses)
            changes = parse_change(action_body(form), review.work.reasons())
        except (fq.FilterError, ChangeError) as exc:
            message = exc.message if hasattr(exc, "message") else str(exc)
            return review.render(
                request, "error.html", status=400, title="Cannot do that", message=f"{exc.field}: {message}"
            )
        selected = fq.apply_filters(review.findings(), filters, dt.date.today())
        if picked:
            selected = selected.filter(pl.col("finding_id").is_in(picked))
        ids = selected["finding_id"].to_list()
        if len(ids) > settings.bulk_limit and not user.is_supervisor:
            return review.render(
                request,
                "error.html",
                status=403,
                title="Supervisors only",
                message=f"A bulk action on more than {settings.bulk_limit} findings ({len(ids):,} selected) "
                "is for a supervisor. Narrow the filter or check the rows to act on.",
            )
        confirmed = form.get("confirm_count", "")
        if apply and confirmed == str(len(ids)) and ids:
            outcome = review.work.change(ids, changes, user.name)
            note = f"{form['action']}: {len(outcome.changed):,} finding(s) changed"
            if outcome.unchanged:
                note += f", {len(outcome.unchanged):,} already so"
            if outcome.refused:
                note += f", {len(outcome.refused):,} refused ({outcome.refused[0][1]})"
            request.state.session.flash.append(note)
            return RedirectResponse(back, status_code=303)
        return review.render(
            request,
            "confirm.html",
            title="Confirm",
            queue=queue,
            count=len(ids),
            action=form.get("action", ""),
            changes=changes,
            pairs=[(k, v) for k, v in pairs if k not in ("confirm_count", "csrf_token")],
            changed_since=apply and confirmed != str(len(ids)),
            back=back,
        )

    @app.get("/dashboard")
    def dashboard_page(request: Request) -> Response:
        if not current_user(request).is_supervisor:
            return review.render(
                request, "error.html", status=403, title="Supervisors only", message="The dashboard is for supervisors."
            )
        today = dt.date.today()  # the request is the boundary that may read the clock (ages)
        return review.render(
            request,
            "dashboard.html",
            title="Dashboard",
            today=today,
            **dashboard.summary(review.findings(), review.work.rows(), today),
        )

    policy = Policy(
        mode=settings.mode,
        authenticator=review_auth,
        local_user=User(settings.local_user, "supervisor"),
        proxy_header=settings.proxy_header,
        trusted_proxies=settings.trusted_proxies,
    )
    return SecurityLayer(app, policy, settings.sessions, route_templates(app))


async def _form_pairs(request: Request) -> list[tuple[str, str]]:
    """A urlencoded form as (name, value) pairs, in order; the app posts no files."""
    body = (await request.body()).decode("utf-8", "replace")
    return parse_qsl(body, keep_blank_values=True)


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form as a dict (the last value of each name)."""
    return dict(await _form_pairs(request))


def _conflict(review: Review, finding_id: str, now: dict) -> ChangeError:
    trail = review.work.history(finding_id)
    who = f" by {trail[-1]['actor']} ({trail[-1]['interface']})" if trail else ""
    return ChangeError(
        "status",
        f"This finding changed since the page was loaded{who}: it is now {now['status']}. "
        "Nothing was saved; reload to see the change.",
        conflict=True,
    )


def _field_of(reason: str) -> str:
    """The form field a worklog refusal is about."""
    for word, name in (("reason", "reason"), ("deferred", "until"), ("status", "status")):
        if word in reason:
            return name
    return "status"


def _jsonable(row: dict) -> dict:
    return {k: v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v for k, v in row.items()}
