"""Console sign-in: accounts from the config, argon2 password hashes, signed session cookies,
CSRF tokens, per-account sign-in limits and an optional trusted reverse-proxy user header.

A session is a cookie holding the account name, its expiry and a CSRF token, signed with
HMAC-SHA256 by a key made at start (or read from ``console.session_key_file``, so sessions
survive a restart and several daemons share them). Forms carry the CSRF token, and a POST
whose token does not match the session's is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("viewer", "operator", "admin")
COOKIE = "callbackd_session"
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """What ``callbackd console hash-password`` prints, for ``password_hash`` in the config."""
    return _hasher.hash(password)


@dataclass(frozen=True)
class Account:
    name: str
    password_hash: str
    role: str
    language: str | None = None

    def may(self, role: str) -> bool:
        """Roles are ordered: viewer < operator < admin."""
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def actor(self) -> str:
        return f"user:{self.name}"


@dataclass(frozen=True)
class Session:
    account: Account
    csrf: str
    expires: int
    via_proxy: bool = False


class SignInLimit:
    """At most *attempts* failed sign-ins per account in *window* seconds (memory only)."""

    def __init__(self, attempts: int = 5, window: float = 300.0) -> None:
        self.attempts = attempts
        self.window = window
        self.failures: dict[str, deque[float]] = {}

    def blocked(self, name: str, now: float) -> bool:
        q = self.failures.get(name)
        while q and q[0] <= now - self.window:
            q.popleft()
        return bool(q) and len(q) >= self.attempts

    def failed(self, name: str, now: float) -> None:
        if len(self.failures) > 10_000:  # names are attacker-chosen: bound the table
            self.failures.clear()
        self.failures.setdefault(name, deque()).append(now)

    def succeeded(self, name: str) -> None:
        self.failures.pop(name, None)


class Auth:
    def __init__(
        self,
        accounts: list[Account],
        *,
        key: bytes | None = None,
        ttl: float = 12 * 3600,
        secure: bool = True,
        proxy_header: str | None = None,
        trusted_proxies: frozenset[str] = frozenset(),
        limit: SignInLimit | None = None,
    ) -> None:
        self.accounts = {a.name: a for a in accounts}
        self.key = key or secrets.token_bytes(32)
        self.ttl = ttl
        self.secure = secure
        self.proxy_header = proxy_header
        self.trusted_proxies = trusted_proxies
        self.limit = limit or SignInLimit()
        # Verified against when the account is unknown, so timing does not tell names apart.
        self._dummy = hash_password(secrets.token_hex(8))

    # -- passwords --------------------------------------------------------------------------

    def check_password(self, name: str, password: str, now: float | None = None) -> Account | str:
        """The account, or why not: "blocked" (too many failures) or "wrong"."""
        now = time.monotonic() if now is None else now
        if self.limit.blocked(name, now):
            return "blocked"
        account = self.accounts.get(name)
        try:
            _hasher.verify(account.password_hash if account else self._dummy, password)
            ok = account is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok:
            self.limit.failed(name, now)
            return "wrong"
        self.limit.succeeded(name)
        return account  # type: ignore[return-value]

    # -- sessions ---------------------------------------------------------------------------

    def _sign(self, data: bytes) -> str:
        return hmac.new(self.key, data, hashlib.sha256).hexdigest()

    def issue(self, account: Account) -> tuple[str, Session]:
        csrf = secrets.token_urlsafe(24)
        expires = int(time.time() + self.ttl)
        body = base64.urlsafe_b64encode(json.dumps([account.name, expires, csrf]).encode()).decode()
        return f"{body}.{self._sign(body.encode())}", Session(account, csrf, expires)

    def read(self, cookie: str | None, *, client: str | None = None, headers: Any = None) -> Session | None:
        """The session a request carries: a valid signed cookie, or a trusted proxy's header."""
        if self.proxy_header and client in self.trusted_proxies and headers is not None:
            name = headers.get(self.proxy_header)
            account = self.accounts.get(name or "")
            if account is not None:
                # The proxy authenticates every request; the CSRF token is derived, not stored.
                csrf = self._sign(f"proxy:{name}".encode())[:32]
                return Session(account, csrf, int(time.time() + self.ttl), via_proxy=True)
        if not cookie or "." not in cookie:
            return None
        body, sig = cookie.rsplit(".", 1)
        if not hmac.compare_digest(sig, self._sign(body.encode())):
            return None
        try:
            name, expires, csrf = json.loads(base64.urlsafe_b64decode(body.encode()))
        except (ValueError, TypeError):
            return None
        account = self.accounts.get(name)
        if account is None or expires < time.time():
            return None
        return Session(account, csrf, int(expires))

    def cookie_args(self) -> dict[str, Any]:
        return {
            "key": COOKIE,
            "httponly": True,
            "secure": self.secure,
            "samesite": "strict",
            "path": "/console",
            "max_age": int(self.ttl),
        }
