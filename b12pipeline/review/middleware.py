"""One ASGI layer in front of the whole app, so no route can forget a security rule.

Per request, in order: the Host header must be this machine when serving loopback (a web page
elsewhere cannot rebind its DNS onto the app); the person is found (session cookie, the local OS
user, or a trusted proxy's header); pages other than login, static files and the health check need
a known person; every state-changing method needs the session's CSRF token (header or form field);
every response gets `Cache-Control: no-store` and a strict Content-Security-Policy; the access log
line names the route template (`/findings/{finding_id}`), never the path's values or the query
string, so no identifier reaches the server log. An exception is logged by its type only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Match

from b12pipeline.review.accounts import Authenticator, User, is_loopback
from b12pipeline.review.sessions import Session, SessionStore

access_log = logging.getLogger("b12pipeline.review.access")
COOKIE = "b12review"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PUBLIC_PREFIXES = ("/static/", "/healthz", "/login")
MAX_FORM_BYTES = 1 << 20
SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
]


@dataclass
class Policy:
    """How people are known: 'local' (loopback, the OS user), 'password' (users file) or 'proxy'."""

    mode: str
    authenticator: Authenticator
    local_user: User | None = None
    proxy_header: str | None = None
    trusted_proxies: frozenset[str] = field(default_factory=lambda: frozenset({"127.0.0.1", "::1"}))


class SecurityLayer:
    def __init__(self, app, policy: Policy, sessions: SessionStore, route_template: Callable[[dict], str]):
        self.app, self.policy, self.sessions, self.route_template = app, policy, sessions, route_template

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        template = self.route_template(scope)
        status = {"code": 0}
        new_cookie: list[str] = []

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                headers += SECURITY_HEADERS
                headers += [(b"set-cookie", c.encode("latin-1")) for c in new_cookie]
                message = {**message, "headers": headers}
            await send(message)

        try:
            response, receive = await self._gate(scope, receive, new_cookie)
            if response is not None:
                await response(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        except Exception as exc:  # the type only: a message may quote a value
            access_log.error("%s %s failed: %s", scope["method"], template, type(exc).__name__)
            if not status["code"]:
                await PlainTextResponse("internal error", status_code=500)(scope, receive, send_with_headers)
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            access_log.info("%s %s %s %.0fms", scope["method"], template, status["code"], elapsed)

    async def _gate(self, scope, receive, new_cookie: list[str]) -> tuple[Response | None, Callable]:
        """A refusal response (or None to go on), and the receive channel to hand on."""
        request = Request(scope)
        path = scope["path"]
        is_api = path.startswith("/api/")
        if self.policy.mode == "local" and not is_loopback(request.url.hostname or ""):
            return PlainTextResponse("unknown host", status_code=400), receive

        session = self._identify(request, new_cookie)
        scope.setdefault("state", {})["session"] = session
        public = path.startswith(PUBLIC_PREFIXES)
        if not public and (session is None or session.user is None):
            if self.policy.mode == "proxy":
                return PlainTextResponse("not authenticated by the proxy", status_code=401), receive
            if is_api:
                return JSONResponse({"error": "login required"}, status_code=401), receive
            return RedirectResponse("/login", status_code=303), receive

        if scope["method"] not in SAFE_METHODS:
            token = request.headers.get(CSRF_HEADER)
            body = b""
            if token is None and request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"
            ):
                body = await _read_body(receive)
                sent = parse_qs(body.decode("utf-8", "replace")).get(CSRF_FIELD)
                token = sent[0] if sent else None
                receive = _replay(body, receive)
            if session is None or not session.csrf_ok(token):
                message = "missing or stale form token: reload the page and try again"
                if is_api:
                    return JSONResponse({"error": message}, status_code=403), receive
                return PlainTextResponse(message, status_code=403), receive
        return None, receive

    def _identify(self, request: Request, new_cookie: list[str]) -> Session | None:
        session = self.sessions.get(request.cookies.get(COOKIE))
        policy = self.policy
        if policy.mode == "local":
            if session is None:
                session = self._start(request, policy.local_user, new_cookie)
        elif policy.mode == "proxy":
            client = request.client.host if request.client else ""
            name = request.headers.get(policy.proxy_header or "") if client in policy.trusted_proxies else None
            if not name:
                return None
            if session is None or session.user is None or session.user.name != name:
                role = policy.authenticator.role_of(name) or "coder"
                session = self._start(request, User(name, role), new_cookie)
        elif session is None and request.url.path == "/login":
            session = self._start(request, None, new_cookie)  # the login form needs a CSRF token
        return session

    def _start(self, request: Request, user: User | None, new_cookie: list[str]) -> Session:
        session = self.sessions.create(user)
        new_cookie.append(session_cookie(session.token, request.url.scheme == "https"))
        return session


def session_cookie(token: str, secure: bool, clear: bool = False) -> str:
    parts = [f"{COOKIE}={'' if clear else token}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if clear:
        parts.append("Max-Age=0")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def route_templates(app) -> Callable[[dict], str]:
    """A function naming the route a request will hit by its template, for the access log."""

    def template(scope: dict) -> str:
        for route in app.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "") or "/static"
        return "(no route)"

    return template


async def _read_body(receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            break
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, original):
    """Hand the already-read body to the app once, then the client's own channel (disconnects)."""
    sent = {"done": False}

    async def receive():
        if not sent["done"]:
            sent["done"] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive
