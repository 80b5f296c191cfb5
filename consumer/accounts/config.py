"""Which Klaviyo accounts the relay serves, each as the settings its own client is built from.

Without ``KLAVIYO_ACCOUNTS`` the relay serves one account, ``default``, from the top-level
``KLAVIYO_*`` settings (exactly the single-account relay). With it, each named account reads
``KLAVIYO_ACCOUNT_<NAME>_<FIELD>`` (NAME upper-cased, ``-`` → ``_``) for the fields in
:data:`ACCOUNT_FIELDS`. A field it does not set is taken from the top level, except the
credentials and where a rotated refresh token is kept (:data:`NEVER_INHERITED`): one account's
key must never be used for another, and two installations writing one token store would
overwrite each other's refresh tokens. Top-level credentials, when set, also form the account
``default`` next to the named ones.

Every problem is a :class:`~consumer.settings.SettingsError` naming the variable, raised at
start-up (``run`` and ``check`` call :func:`accounts_from` before anything connects).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from consumer.settings import Settings, SettingsError

DEFAULT_ACCOUNT = "default"

# FIELD of KLAVIYO_ACCOUNT_<NAME>_<FIELD> → the Settings field it sets for that account.
ACCOUNT_FIELDS: dict[str, str] = {
    "API_KEY": "klaviyo_api_key",
    "AUTH_SCHEME": "klaviyo_auth_scheme",
    "BASE_URL": "klaviyo_base_url",
    "OAUTH_CLIENT_ID": "klaviyo_oauth_client_id",
    "OAUTH_CLIENT_SECRET": "klaviyo_oauth_client_secret",
    "OAUTH_REFRESH_TOKEN": "klaviyo_oauth_refresh_token",
    "OAUTH_TOKEN_URL": "klaviyo_oauth_token_url",
    "OAUTH_TOKEN_STORE": "klaviyo_oauth_token_store",
    "OAUTH_TOKEN_SECRET": "klaviyo_oauth_token_secret",
    "RATE_LIMITS": "rate_limits",
    "RATE_LIMIT_SHARE": "rate_limit_share",
}
NEVER_INHERITED = (
    "API_KEY",
    "OAUTH_CLIENT_ID",
    "OAUTH_CLIENT_SECRET",
    "OAUTH_REFRESH_TOKEN",
    "OAUTH_TOKEN_STORE",
    "OAUTH_TOKEN_SECRET",
)
_SECRET_FIELDS = frozenset({"API_KEY", "OAUTH_CLIENT_SECRET", "OAUTH_REFRESH_TOKEN"})


@dataclass(frozen=True, slots=True)
class Accounts:
    """The accounts (name → the settings of its client) and how events find theirs."""

    settings: dict[str, Settings]
    default: str | None
    topics: dict[str, str]
    header: str
    # Configured with KLAVIYO_ACCOUNTS: a halted account parks its events instead of holding
    # the whole relay (see consumer.accounts.router).
    named: bool

    @property
    def names(self) -> list[str]:
        return list(self.settings)


def env_prefix(name: str) -> str:
    """``KLAVIYO_ACCOUNT_<NAME>_`` of an account."""
    return f"KLAVIYO_ACCOUNT_{name.upper().replace('-', '_')}_"


def accounts_from(settings: Settings, environ: Mapping[str, str] | None = None) -> Accounts:
    """The accounts ``settings`` describe (raises ``SettingsError`` naming the bad variable)."""
    if not settings.klaviyo_accounts:
        # Routing settings without accounts would be ignored silently: refused instead.
        if settings.klaviyo_default_account not in (None, DEFAULT_ACCOUNT):
            raise SettingsError("KLAVIYO_DEFAULT_ACCOUNT: no KLAVIYO_ACCOUNTS are configured")
        if settings.klaviyo_account_topics:
            raise SettingsError("KLAVIYO_ACCOUNT_TOPICS: no KLAVIYO_ACCOUNTS are configured")
        return Accounts(
            {DEFAULT_ACCOUNT: settings},
            DEFAULT_ACCOUNT,
            {},
            settings.klaviyo_account_header,
            named=False,
        )
    env = {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}
    accounts: dict[str, Settings] = {}
    if has_credentials(settings):
        accounts[DEFAULT_ACCOUNT] = settings
    for name in settings.klaviyo_accounts:
        accounts[name] = _account_settings(settings, name, env)
    default = settings.klaviyo_default_account
    if default is None and DEFAULT_ACCOUNT in accounts:
        default = DEFAULT_ACCOUNT
    if default is not None and default not in accounts:
        raise SettingsError(
            f"KLAVIYO_DEFAULT_ACCOUNT: unknown account {default!r}{_known(accounts)}"
        )
    for topic, name in settings.klaviyo_account_topics.items():
        if name not in accounts:
            raise SettingsError(
                f"KLAVIYO_ACCOUNT_TOPICS: topic {topic!r} names unknown account {name!r}"
                f"{_known(accounts)}"
            )
    return Accounts(
        accounts,
        default,
        dict(settings.klaviyo_account_topics),
        settings.klaviyo_account_header,
        named=True,
    )


def _account_settings(top: Settings, name: str, env: Mapping[str, str]) -> Settings:
    prefix = env_prefix(name)
    values: dict[str, Any] = dict(top)
    for field in NEVER_INHERITED:
        values[ACCOUNT_FIELDS[field]] = None
    for field, attribute in ACCOUNT_FIELDS.items():
        raw = env.get(prefix + field)
        if raw is None or raw == "":
            continue
        if field == "RATE_LIMITS":
            try:
                values[attribute] = json.loads(raw)
            except ValueError:
                raise SettingsError(
                    f"invalid configuration: {prefix}RATE_LIMITS: not valid JSON"
                ) from None
        else:
            values[attribute] = raw
    try:
        account = Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        by_attribute = {attribute: field for field, attribute in ACCOUNT_FIELDS.items()}
        for error in exc.errors():
            field = by_attribute.get(str(error["loc"][0]), str(error["loc"][0]).upper())
            shown = "" if field in _SECRET_FIELDS else f" (got {error.get('input')!r})"
            problems.append(f"{prefix}{field}: {error['msg']}{shown}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
    if not has_credentials(account):
        raise SettingsError(
            f"account {name!r} has no credentials: set {prefix}API_KEY or"
            f" {prefix}OAUTH_CLIENT_ID, {prefix}OAUTH_CLIENT_SECRET and {prefix}OAUTH_REFRESH_TOKEN"
        )
    return account


def has_credentials(settings: Settings) -> bool:
    """A private key, or an OAuth app (whose settings are validated complete)."""
    key = settings.klaviyo_api_key
    return settings.oauth or (key is not None and bool(key.get_secret_value()))


def _known(accounts: Mapping[str, Settings]) -> str:
    return f" (accounts: {', '.join(sorted(accounts))})"
