"""The ``Authorization`` header of one Klaviyo account: a private key, or refreshed OAuth tokens.

The client asks :meth:`Credentials.header` before each request and, when Klaviyo answers 401,
:meth:`Credentials.renew` once: a private key cannot be renewed (the 401 halts), an OAuth
token can (refresh, then retry). Built per account from its settings, never shared globally.
"""

from __future__ import annotations

from typing import Protocol

from consumer.klaviyo.oauth import OAuthApp, TokenProvider
from consumer.klaviyo.retry import RetryPolicy
from consumer.klaviyo.token_store import (
    FileTokenStore,
    KubernetesSecretStore,
    MemoryStore,
    TokenStore,
)
from consumer.settings import AuthScheme, Settings


class Credentials(Protocol):
    async def header(self) -> str:
        """The ``Authorization`` value to send now (OAuth: raises GrantRevoked or
        TokenUnavailable)."""
        ...

    async def renew(self, refused: str) -> str | None:
        """Another value after Klaviyo answered 401 to ``refused``; None when there is none."""
        ...

    def refused_for_good(self, refused: str) -> bool:
        """Whether a 401 to ``refused`` (already renewed once) means the credentials are bad,
        rather than a token that expired on its way."""
        ...

    async def close(self) -> None: ...


class StaticKey:
    """A private key (``Klaviyo-API-Key``) or a static OAuth token (``Bearer``)."""

    def __init__(self, value: str, scheme: AuthScheme) -> None:
        prefix = "Klaviyo-API-Key" if scheme is AuthScheme.API_KEY else "Bearer"
        self._header = f"{prefix} {value}"

    async def header(self) -> str:
        return self._header

    async def renew(self, refused: str) -> str | None:
        return None

    def refused_for_good(self, refused: str) -> bool:
        return True

    async def close(self) -> None:
        return None


class OAuthCredentials:
    """``Bearer`` tokens from a :class:`TokenProvider`."""

    def __init__(self, provider: TokenProvider) -> None:
        self.provider = provider

    async def header(self) -> str:
        return f"Bearer {(await self.provider.token()).value}"

    async def renew(self, refused: str) -> str | None:
        return f"Bearer {(await self.provider.renew(refused.removeprefix('Bearer '))).value}"

    def refused_for_good(self, refused: str) -> bool:
        return self.provider.refused_while_fresh(refused.removeprefix("Bearer "))

    async def close(self) -> None:
        await self.provider.close()


def token_store(settings: Settings) -> TokenStore:
    """Where rotated refresh tokens are kept (see :mod:`consumer.klaviyo.token_store`)."""
    if settings.klaviyo_oauth_token_secret:
        return KubernetesSecretStore.in_cluster(settings.klaviyo_oauth_token_secret)
    if settings.klaviyo_oauth_token_store is not None:
        return FileTokenStore(settings.klaviyo_oauth_token_store)
    return MemoryStore()


def credentials_from_settings(settings: Settings, account: str = "default") -> Credentials:
    """OAuth when KLAVIYO_OAUTH_CLIENT_ID is set, else KLAVIYO_API_KEY."""
    if settings.oauth:
        assert settings.klaviyo_oauth_client_id is not None  # settings.oauth says so
        assert settings.klaviyo_oauth_client_secret is not None  # validated with the id
        assert settings.klaviyo_oauth_refresh_token is not None
        app = OAuthApp(
            client_id=settings.klaviyo_oauth_client_id,
            client_secret=settings.klaviyo_oauth_client_secret.get_secret_value(),
            refresh_token=settings.klaviyo_oauth_refresh_token.get_secret_value(),
            token_url=settings.klaviyo_oauth_token_url,
        )
        provider = TokenProvider(
            app,
            token_store(settings),
            policy=RetryPolicy.from_settings(settings),
            timeout_seconds=settings.klaviyo_timeout_seconds,
            account=account,
        )
        return OAuthCredentials(provider)
    if settings.klaviyo_api_key is None:
        raise ValueError("KLAVIYO_API_KEY is not set")
    return StaticKey(settings.klaviyo_api_key.get_secret_value(), settings.klaviyo_auth_scheme)
