"""Klaviyo's OAuth token endpoint (``POST /oauth/token``, refresh grant only) and the bearer
tokens it issues.

On when at least one client is configured (``--oauth-client ID:SECRET``). The endpoint takes
``grant_type=refresh_token`` form-encoded with HTTP Basic ``client_id:client_secret`` and answers
``access_token``, ``token_type``, ``expires_in``, ``refresh_token`` and ``scope`` (RFC 6749). An
access token works for ``token_lifetime`` seconds; after that ``/api/*`` answers 401 in
Klaviyo's JSON:API shape. With ``rotate`` every refresh returns a new refresh token and the old
one stops working at once (``invalid_grant``), as does every token after ``revoke`` (the app
uninstalled). ``GET|POST /_sandbox/oauth`` shows and changes this live (a partial update:
``token_lifetime``, ``rotate``, ``revoke``).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from klaviyo_sandbox import jsonapi

SCOPES = "events:write profiles:read profiles:write"


class OAuthError(ValueError):
    """An OAuth setting that cannot be applied; the message says which and why."""


@dataclass
class OAuthOptions:
    clients: dict[str, str]  # client id → secret
    refresh_tokens: tuple[str, ...] = ("rt_sandbox",)
    token_lifetime: int = 3600
    rotate: bool = False


@dataclass
class OAuthCounts:
    granted: int = 0
    rotated: int = 0
    invalid_grant: int = 0
    invalid_client: int = 0
    expired: int = 0  # /api answers 401 to an expired access token

    def to_json(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class OAuthServer:
    options: OAuthOptions
    clock: Callable[[], float]
    token_lifetime: int = 0
    rotate: bool = False
    refresh_tokens: set[str] = field(default_factory=set)
    access_tokens: dict[str, float] = field(default_factory=dict)  # token → expires at
    counts: OAuthCounts = field(default_factory=OAuthCounts)

    def __post_init__(self) -> None:
        self.token_lifetime = self.options.token_lifetime
        self.rotate = self.options.rotate
        self.refresh_tokens = set(self.options.refresh_tokens)

    # --- the token endpoint -----------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        if not self._client_ok(request.headers.get("Authorization")):
            self.counts.invalid_client += 1
            return _oauth_error(401, "invalid_client", "Client authentication failed.")
        form = await request.post()
        if form.get("grant_type") != "refresh_token":
            return _oauth_error(400, "unsupported_grant_type", "Only refresh_token is served.")
        refresh_token = form.get("refresh_token")
        if not isinstance(refresh_token, str) or refresh_token not in self.refresh_tokens:
            self.counts.invalid_grant += 1
            return _oauth_error(400, "invalid_grant", "The refresh token is invalid or revoked.")
        if self.rotate:
            self.refresh_tokens.discard(refresh_token)
            refresh_token = "rt_" + secrets.token_urlsafe(24)
            self.refresh_tokens.add(refresh_token)
            self.counts.rotated += 1
        now = self.clock()
        self._forget_expired(now)
        access_token = "at_" + secrets.token_urlsafe(24)
        self.access_tokens[access_token] = now + self.token_lifetime
        self.counts.granted += 1
        body = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "refresh_token": refresh_token,
            "scope": SCOPES,
        }
        return web.Response(
            body=orjson.dumps(body),
            headers={"Content-Type": "application/json", "Cache-Control": "no-store"},
        )

    def _client_ok(self, authorization: str | None) -> bool:
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            client_id, _, secret = base64.b64decode(encoded).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        known = self.options.clients.get(client_id)
        return known is not None and secrets.compare_digest(known, secret)

    def _forget_expired(self, now: float) -> None:
        # Kept a while after expiry so a late request is told "expired", not "unknown".
        horizon = now - max(60.0, float(self.token_lifetime))
        for token in [t for t, at in self.access_tokens.items() if at < horizon]:
            del self.access_tokens[token]

    # --- /api gate ----------------------------------------------------------------------------

    def admits(self, authorization: str | None) -> web.Response | bool:
        """True for a live bearer token this server issued; the 401 for an expired one; False
        for anything else (the API's usual 401 applies)."""
        scheme, _, token = (authorization or "").partition(" ")
        expires_at = self.access_tokens.get(token) if scheme == "Bearer" else None
        if expires_at is None:
            return False
        if self.clock() < expires_at:
            return True
        self.counts.expired += 1
        return jsonapi.errors_response(
            401,
            [
                jsonapi.error(
                    401,
                    "The access token has expired.",
                    code="authentication_failed",
                    title="Incorrect authentication credentials.",
                )
            ],
        )

    # --- live changes -------------------------------------------------------------------------

    def update(self, patch: Any) -> None:
        if not isinstance(patch, dict):
            raise OAuthError("the body must be a JSON object")
        unknown = set(patch) - {"token_lifetime", "rotate", "revoke"}
        if unknown:
            raise OAuthError(f"unknown setting(s): {sorted(unknown)}")
        lifetime = patch.get("token_lifetime", self.token_lifetime)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime < 1:
            raise OAuthError("token_lifetime must be a whole number of seconds, at least 1")
        rotate = patch.get("rotate", self.rotate)
        revoke = patch.get("revoke", False)
        if not isinstance(rotate, bool) or not isinstance(revoke, bool):
            raise OAuthError("rotate and revoke must be true or false")
        self.token_lifetime, self.rotate = lifetime, rotate
        if revoke:  # the app uninstalled: every token it holds stops working
            self.refresh_tokens.clear()
            self.access_tokens.clear()

    def to_json(self) -> dict[str, Any]:
        return {
            "token_lifetime": self.token_lifetime,
            "rotate": self.rotate,
            "refresh_tokens": len(self.refresh_tokens),
            "access_tokens": len(self.access_tokens),
            "counts": self.counts.to_json(),
        }


def _oauth_error(status: int, code: str, description: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": code, "error_description": description}),
        headers={"Content-Type": "application/json"},
    )
