"""The review web app: security rules, the JSON API and bad input, on a real store and a real server.

Most tests drive the ASGI app in-process (Starlette's TestClient: the real app, real worklog on
SQLite, real Parquet queues); the bind refusal and the server log are checked on the real
`b12pipeline review` process.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess

import polars as pl
import pytest
from conftest import fixture_identifiers
from review_support import BIN, PASSWORD, adduser, copy_store, free_port, review_server

from b12pipeline.queues import read_queue
from b12pipeline.review.accounts import BindRefused, add_user, check_bind
from b12pipeline.review.app import Settings, build_app
from b12pipeline.review.sessions import SessionStore
from b12pipeline.worklog import history, open_worklog

pytestmark = pytest.mark.slow  # the shared store comes from two real nights (Prefect harness)
LOCAL = "http://127.0.0.1:8050"


@pytest.fixture
def store(two_nights, tmp_path):
    return copy_store(two_nights[0], tmp_path / "out")


def client(out, mode="local", **kw):
    from starlette.testclient import TestClient

    settings = Settings(out=out, mode=mode, users_file=out / "review" / "users.json", local_user="pat", **kw)
    return TestClient(build_app(settings), base_url=LOCAL)


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


def coding_ids(out, rule: str | None = None) -> list[str]:
    found = read_queue(out / "queues", "coding")
    if rule:
        found = found.filter(pl.col("rule_id") == rule)
    return found["finding_id"].to_list()


def web_changes(out, finding_id: str) -> list[dict]:
    return [h for h in history(open_worklog(out), finding_id) if h["interface"] == "web"]


def login(c, name: str, password: str = PASSWORD):
    page = c.get("/login")
    return c.post("/login", data={"csrf_token": csrf_of(page.text), "name": name, "password": password})


# --- binding and accounts ------------------------------------------------------------------------


def test_non_loopback_bind_without_users_refuses_to_start(store, tmp_path):
    port = free_port()
    done = subprocess.run(
        [str(BIN), "review", "--out", str(store), "--host", "0.0.0.0", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing to listen on 0.0.0.0" in done.stderr and "adduser" in done.stderr
    assert "Traceback" not in done.stderr
    with pytest.raises(BindRefused):
        check_bind("10.1.2.3", store / "review" / "users.json", None)
    assert check_bind("127.0.0.1", store / "review" / "users.json", None) == "local"
    assert check_bind("0.0.0.0", store / "review" / "users.json", "X-Remote-User") == "proxy"

    # With a user in the users file the same bind is allowed, with logins.
    added = adduser(store, "carol", "coder")
    assert added.returncode == 0, added.stderr
    users_file = store / "review" / "users.json"
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    text = users_file.read_text()
    assert PASSWORD not in text and "$argon2id$" in text
    assert check_bind("0.0.0.0", users_file, None) == "password"
    short = adduser(store, "dave", "coder", password="short")
    assert short.returncode == 2 and "at least" in short.stderr


def test_loopback_needs_no_login_and_nothing_is_cached(store):
    c = client(store)
    page = c.get("/queues/coding")
    assert page.status_code == 200
    assert "pat (supervisor)" in page.text
    fid = coding_ids(store)[0]
    for path in ("/queues/coding", f"/findings/{fid}", "/api/findings?queue=coding", "/dashboard", "/nope"):
        r = c.get(path)
        assert r.headers["cache-control"] == "no-store", path
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # Another site that rebinds its DNS name onto 127.0.0.1 is refused by the Host check.
    assert c.get("/queues/coding", headers={"host": "evil.example:8050"}).status_code == 400


def test_state_changes_without_the_csrf_token_are_refused(store):
    c = client(store)
    page = c.get("/queues/coding")
    token = csrf_of(page.text)
    fid = coding_ids(store)[0]
    body = json.dumps({"status": "fixed"})
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        r = c.patch(f"/api/findings/{fid}", content=body, headers={"Content-Type": "application/json", **headers})
        assert r.status_code == 403, r.text
    form = {"f_status": "", "action": "fix", "confirm_count": "1", "finding_id": fid}
    assert c.post("/queues/coding/bulk/apply", data=form).status_code == 403
    assert c.post("/queues/coding/bulk/apply", data={**form, "csrf_token": "forged"}).status_code == 403
    assert c.post("/logout").status_code == 403
    assert web_changes(store, fid) == []
    # The same requests with the page's token go through.
    ok = c.patch(
        f"/api/findings/{fid}", content=body, headers={"Content-Type": "application/json", "X-CSRF-Token": token}
    )
    assert ok.status_code == 200 and ok.json()["status"] == "fixed"
    assert [(h["actor"], h["field"], h["after"]) for h in web_changes(store, fid)] == [("pat", "status", "fixed")]


def test_a_coder_cannot_run_supervisor_actions(store):
    users = store / "review" / "users.json"
    add_user(users, "carol", PASSWORD, "coder")
    add_user(users, "sam", PASSWORD, "supervisor")
    coder = client(store, mode="password", bulk_limit=3)
    assert coder.get("/queues/coding", follow_redirects=False).status_code == 303  # to /login
    assert coder.get("/api/findings").status_code == 401
    assert login(coder, "carol", "wrong password!").status_code == 401
    assert login(coder, "carol").status_code == 200
    assert "carol (coder)" in coder.get("/queues/coding").text
    assert coder.get("/dashboard").status_code == 403

    token = csrf_of(coder.get("/queues/coding").text)
    ids = coding_ids(store)
    assert len(ids) > 3
    bulk = {"csrf_token": token, "action": "assign", "owner": "carol"}
    refused = coder.post("/queues/coding/bulk", data=bulk)
    assert refused.status_code == 403 and "supervisor" in refused.text
    refused = coder.post("/queues/coding/bulk/apply", data={**bulk, "confirm_count": str(len(ids))})
    assert refused.status_code == 403
    assert all(web_changes(store, i) == [] for i in ids)
    # Three checked rows are within a coder's limit.
    few = {"csrf_token": token, "action": "assign", "owner": "carol", "finding_id": ids[:3]}
    confirm = coder.post("/queues/coding/bulk", data=few)
    assert confirm.status_code == 200 and 'data-count="3"' in confirm.text
    applied = coder.post("/queues/coding/bulk/apply", data={**few, "confirm_count": "3"}, follow_redirects=True)
    assert "3 finding(s) changed" in applied.text
    assert [h["actor"] for h in web_changes(store, ids[0])] == ["carol"]

    supervisor = client(store, mode="password", bulk_limit=3)
    login(supervisor, "sam")
    assert supervisor.get("/dashboard").status_code == 200
    token = csrf_of(supervisor.get("/queues/coding").text)
    confirm = supervisor.post("/queues/coding/bulk", data={**bulk, "csrf_token": token, "owner": "sam"})
    assert confirm.status_code == 200 and f'data-count="{len(ids)}"' in confirm.text


def test_logins_sessions_expire_and_lock():
    clock = [0.0]
    sessions = SessionStore(idle=60, absolute=300, clock=lambda: clock[0])
    s = sessions.create()
    clock[0] = 59
    assert sessions.get(s.token) is s
    clock[0] = 120
    assert sessions.get(s.token) is None  # idle for 61 s
    clock[0] = 0
    s = sessions.create()
    for t in range(50, 301, 50):
        clock[0] = t
        assert sessions.get(s.token) is s
    clock[0] = 301
    assert sessions.get(s.token) is None  # past the absolute limit, however active


def test_login_rotates_the_session_and_locks_after_failures(store):
    add_user(store / "review" / "users.json", "carol", PASSWORD, "coder")
    c = client(store, mode="password")
    c.get("/login")
    before = c.cookies.get("b12review")
    assert login(c, "carol").status_code == 200
    assert c.cookies.get("b12review") != before
    other = client(store, mode="password")
    for _ in range(5):
        assert login(other, "carol", "not the password").status_code == 401
    assert login(other, "carol").status_code == 401  # locked for a while, even with the right password


# --- API, finding page, bad input --------------------------------------------------------------


def test_api_lists_filters_sorts_and_pages(store):
    c = client(store)
    coding = read_queue(store / "queues", "coding")
    rule = coding["rule_id"].value_counts(sort=True)["rule_id"][0]
    listed = c.get(f"/api/findings?queue=coding&rule={rule.lower()}&size=25").json()
    assert listed["total"] == coding.filter(pl.col("rule_id") == rule).height
    assert {f["rule_id"] for f in listed["findings"]} == {rule}
    everything = c.get("/api/findings?queue=coding&size=25&sort=service_date&dir=desc").json()
    assert everything["total"] == coding.height
    dates = [f["service_date"] for f in everything["findings"]]
    assert dates == sorted(dates, reverse=True)
    page2 = c.get("/api/findings?queue=coding&size=25&page=2&sort=service_date&dir=desc").json()
    seen = {f["finding_id"] for f in everything["findings"]} | {f["finding_id"] for f in page2["findings"]}
    assert len(seen) == min(coding.height, 50)
    bad = c.get("/api/findings?queue=coding&from=2024-02-30")
    assert bad.status_code == 400 and bad.json()["field"] == "from"
    assert c.get("/api/findings?queue=coding&status=bogus").json()["field"] == "status"


def test_finding_page_context_and_bad_input(store):
    c = client(store)
    coding = read_queue(store / "queues", "coding")
    row = coding.row(0, named=True)
    page = c.get(f"/findings/{row['finding_id']}")
    assert page.status_code == 200
    for text in (row["message"], row["patient_id"], row["admin_id"], "Citations", "lot number", "charge hcpcs"):
        assert text in page.text, text
    assert c.get("/findings/0000000000deadbeef00").status_code == 404
    assert c.get("/queues/coding?from=2024-13-01").status_code == 400

    token = csrf_of(page.text)
    version = re.search(r'data-version="(\d+)"', page.text).group(1)
    headers = {"Content-Type": "application/json", "X-CSRF-Token": token, "If-Match": version}

    def patch(body, **extra):
        return c.patch(f"/api/findings/{row['finding_id']}", content=json.dumps(body), headers={**headers, **extra})

    assert patch({"status": "bogus"}).json()["field"] == "status"
    assert patch({"status": "deferred", "until": "2024-02-30"}).json()["field"] == "until"
    assert patch({"status": "dismissed"}).json()["field"] == "reason"
    assert patch({"status": "dismissed", "reason": "because"}).json()["field"] == "reason"
    assert web_changes(store, row["finding_id"]) == []
    assert patch({"status": "dismissed", "reason": "false positive"}).status_code == 200
    # A second edit from the same, now stale, page: a conflict, nothing overwritten.
    stale = patch({"status": "fixed"})
    assert stale.status_code == 409 and "changed since" in stale.json()["error"]
    assert [h["after"] for h in web_changes(store, row["finding_id"]) if h["field"] == "status"] == ["dismissed"]


def test_server_log_holds_no_identifier_after_a_session_of_clicks(store, tmp_path):
    log = tmp_path / "server.log"
    coding = read_queue(store / "queues", "coding")
    row = coding.row(0, named=True)
    with review_server(store, log) as base:
        with httpx_client(base) as http:
            page = http.get(f"/queues/coding?rule={row['rule_id']}&payer=medicare&sort=severity")
            token = csrf_of(page.text)
            http.get(f"/findings/{row['finding_id']}")
            http.get(f"/api/findings?queue=coding&rule={row['rule_id']}&owner={row['patient_id']}")
            http.patch(
                f"/api/findings/{row['finding_id']}",
                content=json.dumps({"status": "in_progress", "comment": f"called about {row['patient_id']}"}),
                headers={"Content-Type": "application/json", "X-CSRF-Token": token},
            )
            http.post("/queues/coding/bulk", data={"csrf_token": token, "f_rule": row["rule_id"], "action": "start"})
            http.get("/findings/not-a-finding")
            http.get("/dashboard")
    text = log.read_text()
    assert "GET /findings/{finding_id} 200" in text and "PATCH /api/findings/{finding_id} 200" in text
    secrets = fixture_identifiers() | set(coding["finding_id"].to_list()) | {"not-a-finding", "medicare"}
    leaked = sorted(s for s in secrets if s in text)
    assert leaked == [], leaked
    assert "?" not in text


def httpx_client(base: str):
    import httpx

    return httpx.Client(base_url=base, timeout=30, follow_redirects=True)


def test_a_trusted_proxy_names_the_user_and_nobody_else_can(store):
    add_user(store / "review" / "users.json", "sam", PASSWORD, "supervisor")
    # TestClient's requests come from the address "testclient": trusted here, not by default.
    behind = client(store, mode="proxy", proxy_header="X-Remote-User", trusted_proxies=frozenset({"testclient"}))
    assert behind.get("/queues/coding").status_code == 401  # the proxy sent no user
    page = behind.get("/queues/coding", headers={"X-Remote-User": "sam"})
    assert page.status_code == 200 and "sam (supervisor)" in page.text
    assert behind.get("/dashboard", headers={"X-Remote-User": "sam"}).status_code == 200
    assert "kim (coder)" in behind.get("/queues/coding", headers={"X-Remote-User": "kim"}).text
    assert behind.get("/dashboard", headers={"X-Remote-User": "kim"}).status_code == 403
    # The same header from an address that is not the proxy is ignored.
    direct = client(store, mode="proxy", proxy_header="X-Remote-User")
    assert direct.get("/queues/coding", headers={"X-Remote-User": "sam"}).status_code == 401
