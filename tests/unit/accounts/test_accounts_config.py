"""KLAVIYO_ACCOUNTS and KLAVIYO_ACCOUNT_<NAME>_<FIELD>: what each account gets, what it inherits,
and the start-up errors (one line naming the variable, never a secret's value)."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.accounts.config import DEFAULT_ACCOUNT, accounts_from, env_prefix
from consumer.accounts.routing import route
from consumer.settings import AuthScheme, Settings, SettingsError, load_settings

SECRET = "pk_never_shown_0123456789"


def settings(**values: Any) -> Settings:
    return Settings(**values)


def test_without_accounts_the_top_level_settings_are_the_one_default_account() -> None:
    top = settings(klaviyo_api_key="pk_top")
    accounts = accounts_from(top, {})
    assert accounts.names == [DEFAULT_ACCOUNT] and not accounts.named
    assert accounts.settings[DEFAULT_ACCOUNT] is top
    # A header naming anything is ignored without KLAVIYO_ACCOUNTS: today's behaviour.
    assert route(accounts, "t", (("klaviyo-account", b"other"),)) == DEFAULT_ACCOUNT


def test_a_named_account_reads_its_own_fields_and_inherits_the_rest_but_credentials() -> None:
    top = settings(
        klaviyo_accounts=["shop-a"],
        klaviyo_oauth_token_store="/tmp/top-store",
        klaviyo_base_url="http://top:1",
        rate_limit_share=0.5,
    )
    env = {
        "KLAVIYO_ACCOUNT_SHOP_A_API_KEY": "pk_a",
        "KLAVIYO_ACCOUNT_SHOP_A_AUTH_SCHEME": "bearer",
        "KLAVIYO_ACCOUNT_SHOP_A_RATE_LIMITS": '{"create_event": {"burst": {"requests": 5,'
        ' "seconds": 1}, "steady": {"requests": 50, "seconds": 60}}}',
    }
    accounts = accounts_from(top, env)
    assert accounts.names == ["shop-a"] and accounts.named
    assert accounts.default is None  # no top-level credentials: no default account
    a = accounts.settings["shop-a"]
    assert a.klaviyo_api_key is not None and a.klaviyo_api_key.get_secret_value() == "pk_a"
    assert a.klaviyo_auth_scheme is AuthScheme.BEARER
    assert a.klaviyo_base_url == "http://top:1" and a.rate_limit_share == 0.5  # inherited
    assert a.rate_limits["create_event"].steady.requests == 50
    assert a.rate_limits["bulk_create_events"].steady.requests == 150  # defaults merged
    assert a.klaviyo_oauth_token_store is None  # never shared: one installation's tokens


def test_top_level_credentials_form_the_default_account_next_to_named_ones() -> None:
    top = settings(
        klaviyo_accounts=["b"],
        klaviyo_api_key="pk_top",
        klaviyo_account_topics={"shop.order.placed": "b"},
    )
    accounts = accounts_from(top, {"KLAVIYO_ACCOUNT_B_API_KEY": "pk_b"})
    assert accounts.names == [DEFAULT_ACCOUNT, "b"] and accounts.default == DEFAULT_ACCOUNT
    b = accounts.settings["b"]
    assert b.klaviyo_api_key is not None and b.klaviyo_api_key.get_secret_value() == "pk_b"


def test_an_oauth_account() -> None:
    top = settings(klaviyo_accounts=["m1"], klaviyo_default_account="m1")
    prefix = env_prefix("m1")
    env = {
        prefix + "OAUTH_CLIENT_ID": "app",
        prefix + "OAUTH_CLIENT_SECRET": "s",
        prefix + "OAUTH_REFRESH_TOKEN": "r",
        prefix + "OAUTH_TOKEN_STORE": "/tmp/m1",
    }
    accounts = accounts_from(top, env)
    m1 = accounts.settings["m1"]
    assert m1.oauth and str(m1.klaviyo_oauth_token_store) == "/tmp/m1"
    assert accounts.default == "m1"


@pytest.mark.parametrize(
    ("values", "env", "says"),
    [
        ({"klaviyo_accounts": ["a"]}, {}, "account 'a' has no credentials: set KLAVIYO_ACCOUNT_A_"),
        (
            {"klaviyo_accounts": ["a"], "klaviyo_default_account": "nope"},
            {"KLAVIYO_ACCOUNT_A_API_KEY": SECRET},
            "KLAVIYO_DEFAULT_ACCOUNT: unknown account 'nope'",
        ),
        (
            {"klaviyo_accounts": ["a"], "klaviyo_account_topics": {"t": "nope"}},
            {"KLAVIYO_ACCOUNT_A_API_KEY": SECRET},
            "KLAVIYO_ACCOUNT_TOPICS: topic 't' names unknown account 'nope'",
        ),
        (
            {"klaviyo_accounts": ["a"]},
            {"KLAVIYO_ACCOUNT_A_API_KEY": SECRET, "KLAVIYO_ACCOUNT_A_BASE_URL": "a.klaviyo.com"},
            "KLAVIYO_ACCOUNT_A_BASE_URL: Value error, must be an http:// or https:// URL",
        ),
        (
            {"klaviyo_accounts": ["a"]},
            {"KLAVIYO_ACCOUNT_A_OAUTH_CLIENT_ID": "app", "KLAVIYO_ACCOUNT_A_API_KEY": SECRET},
            "KLAVIYO_ACCOUNT_A_OAUTH_REFRESH_TOKEN: Value error, OAuth needs",
        ),
        (
            {"klaviyo_accounts": ["a"]},
            {"KLAVIYO_ACCOUNT_A_API_KEY": SECRET, "KLAVIYO_ACCOUNT_A_RATE_LIMITS": "{"},
            "KLAVIYO_ACCOUNT_A_RATE_LIMITS: not valid JSON",
        ),
        (
            {"klaviyo_account_topics": {"t": "a"}},
            {},
            "KLAVIYO_ACCOUNT_TOPICS: no KLAVIYO_ACCOUNTS are configured",
        ),
        (
            {"klaviyo_default_account": "a"},
            {},
            "KLAVIYO_DEFAULT_ACCOUNT: no KLAVIYO_ACCOUNTS are configured",
        ),
    ],
)
def test_start_up_errors_name_the_variable(
    values: dict[str, Any], env: dict[str, str], says: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        accounts_from(settings(**values), env)
    assert says in str(raised.value)
    assert SECRET not in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("name", ["Shop", "-a", "a_b", "x" * 32, ""])
def test_a_bad_account_name_is_refused(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLAVIYO_ACCOUNTS", f'["{name}"]')
    with pytest.raises(SettingsError, match="KLAVIYO_ACCOUNTS: Value error, bad account name"):
        load_settings()


def test_the_environment_gives_the_accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLAVIYO_ACCOUNTS", '["eu-shop"]')
    monkeypatch.setenv("KLAVIYO_ACCOUNT_TOPICS", '{"shop.order.placed": "eu-shop"}')
    monkeypatch.setenv("KLAVIYO_ACCOUNT_EU_SHOP_API_KEY", "pk_eu")
    accounts = accounts_from(load_settings())
    assert accounts.names == ["eu-shop"] and accounts.topics == {"shop.order.placed": "eu-shop"}


# --- routing -----------------------------------------------------------------------------------


def _two() -> Any:
    top = settings(
        klaviyo_accounts=["a", "b"],
        klaviyo_api_key="pk_top",
        klaviyo_account_topics={"orders": "b"},
    )
    return accounts_from(top, {"KLAVIYO_ACCOUNT_A_API_KEY": "k", "KLAVIYO_ACCOUNT_B_API_KEY": "k"})


@pytest.mark.parametrize(
    ("topic", "headers", "account"),
    [
        ("orders", (("klaviyo-account", b"a"),), "a"),  # the header wins over the topic map
        ("orders", (), "b"),  # the topic map
        ("other", (), DEFAULT_ACCOUNT),  # the default account
        ("other", (("klaviyo-account", b"default"),), DEFAULT_ACCOUNT),
        ("orders", (("klaviyo-account", b"c"),), None),  # unknown: no fallback to the topic's
        ("orders", (("klaviyo-account", b"\xff"),), None),
        ("orders", (("klaviyo-account", b"b"), ("klaviyo-account", b"a")), "a"),  # the last
        ("orders", (("Klaviyo-Account", b"a"),), "b"),  # Kafka header names are exact
    ],
)
def test_route(topic: str, headers: tuple[tuple[str, bytes], ...], account: str | None) -> None:
    assert route(_two(), topic, headers) == account


def test_without_a_default_an_unmapped_event_has_no_account() -> None:
    accounts = accounts_from(settings(klaviyo_accounts=["a"]), {"KLAVIYO_ACCOUNT_A_API_KEY": "k"})
    assert route(accounts, "orders", ()) is None
    assert route(accounts, "orders", (("klaviyo-account", b"a"),)) == "a"
