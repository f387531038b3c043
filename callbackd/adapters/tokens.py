"""Bearer tokens with scopes, for the HTTP API.

A token carries scopes from the config (``[[api.tokens]]``); ``http.token`` is the
intake-only token it always was. Every route declares the one scope it needs with
:meth:`Tokens.require`; what a scope implies is said here and nowhere else.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

SCOPES = ("intake", "read", "admin")
IMPLIES: dict[str, frozenset[str]] = {
    "intake": frozenset({"intake"}),
    "read": frozenset({"read"}),
    "admin": frozenset({"admin", "read"}),
}

# Module level: annotations are strings here, and FastAPI resolves them in module globals.
bearer = HTTPBearer(auto_error=False, description="A token from http.token or [[api.tokens]]")


@dataclass(frozen=True)
class Token:
    name: str
    secret: bytes
    scopes: frozenset[str]

    @property
    def granted(self) -> frozenset[str]:
        return frozenset().union(*(IMPLIES[s] for s in self.scopes))

    @property
    def actor(self) -> str:
        """How the audit log names what this token did."""
        return f"token:{self.name}"


class Tokens:
    def __init__(self, tokens: Iterable[Token]) -> None:
        self.tokens = tuple(tokens)
        if any(not t.secret for t in self.tokens):
            raise ValueError("an empty token would let anyone in")

    @classmethod
    def from_config(cls, cfg: Any) -> Tokens:
        tokens = [Token("http", cfg.http_token().encode(), frozenset({"intake"}))]
        tokens += [Token(t.name, t.secret().encode(), frozenset(t.scopes)) for t in cfg.api.tokens]
        return cls(tokens)

    def find(self, given: bytes) -> Token | None:
        """Every token is compared, in constant time each, so timing tells nothing of which one matched."""
        found = None
        for t in self.tokens:
            if hmac.compare_digest(given, t.secret) and found is None:
                found = t
        return found

    def require(self, scope: str) -> Callable[..., Token]:
        """A FastAPI dependency: 401 without a known token, 403 when it lacks *scope*."""
        if scope not in IMPLIES:
            raise ValueError(f"unknown scope {scope!r}")

        def check(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Token:
            given = creds.credentials.encode() if creds is not None else b""
            token = self.find(given) if given else None
            if token is None:
                raise HTTPException(
                    401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
                )
            if scope not in token.granted:
                raise HTTPException(403, f"this token lacks the {scope} scope")
            return token

        check.scope = scope  # type: ignore[attr-defined]  # read by the route-table test
        return check
