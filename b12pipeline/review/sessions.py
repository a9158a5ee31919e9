"""Server-side sessions: a random token in an HttpOnly cookie, expiring when idle and at a hard limit.

Sessions live in the server's memory only (a restart logs everyone out, which is the safe failure).
Each carries its own CSRF token, compared in constant time on every state-changing request. A
session may be anonymous (the login form needs a CSRF token before anyone is known).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from b12pipeline.review.accounts import User

IDLE_SECONDS = 30 * 60
ABSOLUTE_SECONDS = 10 * 60 * 60
MAX_SESSIONS = 10_000  # a flood of anonymous visits cannot grow memory without bound


@dataclass
class Session:
    token: str
    csrf: str
    created: float
    seen: float
    user: User | None = None
    flash: list[str] = field(default_factory=list)

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf, presented or "")


class SessionStore:
    def __init__(
        self,
        idle: float = IDLE_SECONDS,
        absolute: float = ABSOLUTE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.idle, self.absolute, self.clock = idle, absolute, clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: User | None = None) -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now, user)
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                self._prune(now)
            if len(self._sessions) >= MAX_SESSIONS:  # still full: drop the oldest anonymous ones first
                for token, _ in sorted(self._sessions.items(), key=lambda kv: (kv[1].user is not None, kv[1].seen)):
                    del self._sessions[token]
                    if len(self._sessions) < MAX_SESSIONS:
                        break
            self._sessions[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session of `token` (its idle clock restarts), or None when unknown or expired."""
        if not token:
            return None
        now = self.clock()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if now - session.seen > self.idle or now - session.created > self.absolute:
                del self._sessions[token]
                return None
            session.seen = now
            return session

    def drop(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)

    def _prune(self, now: float) -> None:
        for token in [
            t for t, s in self._sessions.items() if now - s.seen > self.idle or now - s.created > self.absolute
        ]:
            del self._sessions[token]
