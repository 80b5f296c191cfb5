"""The chart with several Klaviyo accounts (``accounts:``): the settings of the contract
(KLAVIYO_ACCOUNTS, KLAVIYO_ACCOUNT_TOPICS, KLAVIYO_ACCOUNT_<NAME>_<FIELD>), each account's
credentials from its own Secret, a token store per OAuth account, the same pod in the CronJob,
and the alerts and dashboard per account."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from consumer.accounts.config import accounts_from
from consumer.settings import Settings, load_settings
from tests.deploy.test_helm import (
    PROMTOOL,
    _env_of,
    _merged,
    _promtool_test,
    _rules_file,
    _schema_validator,
    _series,
    _template,
    fired_alert,
    needs_helm,
    needs_promtool,
    pod_spec,
    relay_container,
    render_ci,
    render_notes,
)
from tests.fixtures.helm import (
    CHART,
    FULLNAME,
    KUBE_VERSION,
    NAMESPACE,
    by_kind,
    one,
    render,
    values_args,
)

ACCOUNTS = "accounts-values.yaml"
# The metrics that carry the label account (the contract of issue 16).
ACCOUNT_METRICS = (
    "klaviyo_relay_klaviyo_requests_total",
    "klaviyo_relay_klaviyo_throttled_total",
    "klaviyo_relay_rate_limit_remaining",
    "klaviyo_relay_quota_share",
    "klaviyo_relay_quota_saturation",
    "klaviyo_relay_halted",
    "klaviyo_relay_oauth_refreshes_total",
    "klaviyo_relay_oauth_token_expiry_timestamp_seconds",
    "klaviyo_relay_events_delivered_total",
)
OAUTH_KEYS = {
    "OAUTH_CLIENT_ID": "oauth-client-id",
    "OAUTH_CLIENT_SECRET": "oauth-client-secret",
    "OAUTH_REFRESH_TOKEN": "oauth-refresh-token",
}


def _refs(env: dict[str, dict[str, Any]], prefix: str) -> dict[str, dict[str, str]]:
    """The Secret references of the env vars starting with ``prefix``, by the rest of the name."""
    return {
        name.removeprefix(prefix): e["valueFrom"]["secretKeyRef"]
        for name, e in env.items()
        if name.startswith(prefix)
    }


@needs_helm
def test_each_account_gets_its_names_topics_and_credentials() -> None:
    config, env = _env_of(render_ci(ACCOUNTS))
    assert json.loads(config["KLAVIYO_ACCOUNTS"]) == ["shop-eu", "merchant-1", "merchant-2"]
    assert json.loads(config["KLAVIYO_ACCOUNT_TOPICS"]) == {
        "shop.order.placed": "shop-eu",
        "shop.order.shipment-updated": "shop-eu",
        "shop.lead.captured": "merchant-1",
    }
    assert config["KLAVIYO_DEFAULT_ACCOUNT"] == "shop-eu"
    assert config["KLAVIYO_ACCOUNT_HEADER"] == "klaviyo-account"
    # A private key and two OAuth installations, each from its own Secret, by the fixed keys.
    assert _refs(env, "KLAVIYO_ACCOUNT_SHOP_EU_") == {
        "API_KEY": {"name": "klaviyo-shop-eu", "key": "api-key"}
    }
    for name in ("MERCHANT_1", "MERCHANT_2"):
        secret = f"klaviyo-{name.lower().replace('_', '-')}"
        assert _refs(env, f"KLAVIYO_ACCOUNT_{name}_") == {
            field: {"name": secret, "key": key} for field, key in OAUTH_KEYS.items()
        }
    # No top-level key: no account default besides the listed ones, no Secret expected for it.
    assert not {"KLAVIYO_API_KEY", "KLAVIYO_OAUTH_CLIENT_SECRET"} & set(env)
    # Non-secret settings per account in the ConfigMap; credentials never.
    assert config["KLAVIYO_ACCOUNT_MERCHANT_1_RATE_LIMIT_SHARE"] == "0.5"
    assert config["KLAVIYO_ACCOUNT_MERCHANT_2_BASE_URL"] == "https://klaviyo-proxy.internal:8443"
    assert "KLAVIYO_ACCOUNT_SHOP_EU_BASE_URL" not in config  # inherits KLAVIYO_BASE_URL
    assert not set(config) & set(env)
    assert config["KLAVIYO_OAUTH_TOKEN_URL"] == "https://a.klaviyo.com/oauth/token"


@needs_helm
@pytest.mark.parametrize(
    ("values_file", "names", "default"),
    [
        (ACCOUNTS, ["shop-eu", "merchant-1", "merchant-2"], "shop-eu"),
        ("accounts-cronjob-values.yaml", ["default", "shop-eu", "merchant-1"], "default"),
    ],
)
def test_the_relay_reads_the_accounts_the_chart_renders(
    values_file: str, names: list[str], default: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, env = _env_of(render_ci(values_file))
    for key in list(os.environ):
        if key.upper() in {f.upper() for f in Settings.model_fields} or key.startswith(
            "KLAVIYO_ACCOUNT_"
        ):
            monkeypatch.delenv(key)
    environ = {**config, **dict.fromkeys(env, "from-secret")}  # secrets: any placeholder
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    accounts = accounts_from(load_settings(), environ)
    assert accounts.names == names
    assert accounts.default == default
    shop = accounts.settings["shop-eu"]
    assert not shop.oauth and shop.klaviyo_api_key is not None
    merchant = accounts.settings["merchant-1"]
    assert merchant.oauth
    assert merchant.klaviyo_oauth_token_secret == f"{FULLNAME}-oauth-token-merchant-1"
    assert accounts.topics == json.loads(config["KLAVIYO_ACCOUNT_TOPICS"])
    if values_file == ACCOUNTS:
        assert merchant.rate_limit_share == 0.5
        other = accounts.settings["merchant-2"]
        assert other.klaviyo_base_url == "https://klaviyo-proxy.internal:8443"
        assert other.klaviyo_oauth_token_secret == f"{FULLNAME}-oauth-token-merchant-2"
        assert shop.klaviyo_base_url == "https://a.klaviyo.com"  # inherited


@needs_helm
def test_each_oauth_account_gets_its_own_token_store() -> None:
    docs = render_ci(ACCOUNTS)
    config, _ = _env_of(docs)
    stores = {f"{FULLNAME}-oauth-token-merchant-1", f"{FULLNAME}-oauth-token-merchant-2"}
    assert {
        config["KLAVIYO_ACCOUNT_MERCHANT_1_OAUTH_TOKEN_SECRET"],
        config["KLAVIYO_ACCOUNT_MERCHANT_2_OAUTH_TOKEN_SECRET"],
    } == stores
    assert "KLAVIYO_ACCOUNT_SHOP_EU_OAUTH_TOKEN_SECRET" not in config  # a private key
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    assert set(secrets) == stores
    for secret in secrets.values():
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # One Role per store, granting that one Secret only, bound to the pods' service account.
    roles = {r["metadata"]["name"]: r["rules"] for r in by_kind(docs, "Role")}
    assert roles == {
        name: [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": [name],
                "verbs": ["get", "patch"],
            }
        ]
        for name in stores
    }
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
        ]
    assert len(by_kind(docs, "RoleBinding")) == 2
    assert pod_spec(docs)["automountServiceAccountToken"] is True


@needs_helm
def test_without_token_stores_the_oauth_accounts_leave_the_api_server_alone(
    tmp_path: Path,
) -> None:
    values = yaml.safe_load((CHART / "ci" / ACCOUNTS).read_text())
    values["klaviyo"]["oauth"] = {"tokenStore": {"enabled": False}}
    docs = render(values=values, tmp=tmp_path)
    config, _ = _env_of(docs)
    assert not by_kind(docs, "Role") and not by_kind(docs, "Secret")
    assert not [k for k in config if k.endswith("_OAUTH_TOKEN_SECRET")]
    assert pod_spec(docs)["automountServiceAccountToken"] is False


@needs_helm
def test_the_cronjob_runs_the_same_accounts_with_the_top_level_key_as_default(
    tmp_path: Path,
) -> None:
    values = yaml.safe_load((CHART / "ci" / "accounts-cronjob-values.yaml").read_text())
    cronjob = render_ci("accounts-cronjob-values.yaml")
    deployment = render(values={**values, "mode": "deployment"}, tmp=tmp_path)
    for doc in cronjob:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    assert relay_container(cronjob)["env"] == relay_container(deployment)["env"]
    assert pod_spec(cronjob)["automountServiceAccountToken"] is True
    config, env = _env_of(cronjob)
    assert json.loads(config["KLAVIYO_ACCOUNTS"]) == ["shop-eu", "merchant-1"]
    # The top-level key stays: it is the account default (unrouted events, unless
    # klaviyo.defaultAccount names another).
    assert env["KLAVIYO_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "klaviyo-key"
    assert env["KLAVIYO_ACCOUNT_SHOP_EU_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "klaviyo-shop-eu",
        "key": "api-key",
    }
    (store,) = by_kind(cronjob, "Secret")
    assert store["metadata"]["name"] == f"{FULLNAME}-oauth-token-merchant-1"


@needs_helm
def test_notes_name_the_accounts_and_expect_no_top_level_key(tmp_path: Path) -> None:
    notes = render_notes(tmp_path, ["-f", str(CHART / "ci" / ACCOUNTS)])
    assert "WARNING" not in notes
    assert (
        "Klaviyo accounts: shop-eu (api-key, Secret klaviyo-shop-eu), merchant-1 (oauth, Secret"
        " klaviyo-merchant-1), merchant-2 (oauth, Secret klaviyo-merchant-2)."
    ) in notes
    assert "dead-lettered (unknown_account)" in notes
    assert "No default account" not in notes  # klaviyo.defaultAccount: shop-eu
    values = yaml.safe_load((CHART / "ci" / ACCOUNTS).read_text())
    values["klaviyo"] = {}
    (tmp_path / "no-default.yaml").write_text(yaml.safe_dump(values))
    unrouted = render_notes(tmp_path / "n", ["-f", str(tmp_path / "no-default.yaml")])
    assert "No default account" in unrouted


@needs_helm
def test_every_account_setting_names_a_listed_account() -> None:
    """The per-account names the pods get are exactly the listed accounts' (upper-cased, - as _)
    and the contract's fields, so none is silently ignored by the relay."""
    fields = {
        "API_KEY",
        "AUTH_SCHEME",
        "BASE_URL",
        "OAUTH_CLIENT_ID",
        "OAUTH_CLIENT_SECRET",
        "OAUTH_REFRESH_TOKEN",
        "OAUTH_TOKEN_URL",
        "OAUTH_TOKEN_STORE",
        "OAUTH_TOKEN_SECRET",
        "RATE_LIMITS",
        "RATE_LIMIT_SHARE",
    }
    for values_file in (ACCOUNTS, "accounts-cronjob-values.yaml"):
        config, env = _env_of(render_ci(values_file))
        names = [n.upper().replace("-", "_") for n in json.loads(config["KLAVIYO_ACCOUNTS"])]
        pattern = re.compile(rf"^KLAVIYO_ACCOUNT_({'|'.join(names)})_({'|'.join(fields)})$")
        per_account = [
            k
            for k in (*config, *env)
            if k.startswith("KLAVIYO_ACCOUNT_")
            and k not in {"KLAVIYO_ACCOUNT_TOPICS", "KLAVIYO_ACCOUNT_HEADER"}
        ]
        assert per_account and all(pattern.match(k) for k in per_account), per_account


@needs_helm
@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "accounts": [
                    {"name": "a", "existingSecret": "s-a", "topics": ["shop.order.placed"]},
                    {"name": "b", "existingSecret": "s-b", "topics": ["shop.order.placed"]},
                ]
            },
            "topic shop.order.placed is given to both a and b",
        ),
        (
            {
                "accounts": [
                    {"name": "a", "existingSecret": "s-a"},
                    {"name": "a", "existingSecret": "s-b"},
                ]
            },
            "accounts: a is listed twice",
        ),
        (
            {
                "klaviyo": {"defaultAccount": "c"},
                "accounts": [{"name": "a", "existingSecret": "s-a"}],
            },
            "klaviyo.defaultAccount c is not in accounts",
        ),
        (
            {
                "klaviyo": {"defaultAccount": "default"},
                "accounts": [{"name": "a", "existingSecret": "s-a"}],
            },
            "klaviyo.defaultAccount default is not in accounts",
        ),
    ],
    ids=["topic twice", "name twice", "unknown default", "default without a top-level key"],
)
def test_chart_refuses_inconsistent_accounts(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    result = _template(*values_args(values, [], tmp_path))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "account",
    [
        {"name": "Shop", "existingSecret": "s"},  # upper case
        {"name": "-shop", "existingSecret": "s"},
        {"name": "a" * 32, "existingSecret": "s"},
        {"name": "shop"},  # no Secret
        {"name": "shop", "existingSecret": "s", "authScheme": "bearer"},
        {"name": "shop", "existingSecret": "s", "rateLimitShare": "1.5"},
        {"name": "shop", "existingSecret": "s", "baseUrl": "a.klaviyo.com"},
        {"name": "shop", "existingSecret": "s", "apiKey": "pk_in_values"},  # never a value
    ],
    ids=[
        "upper case",
        "leading dash",
        "name too long",
        "no secret",
        "unknown scheme",
        "share above 1",
        "url without scheme",
        "key as a value",
    ],
)
def test_schema_refuses_bad_accounts(account: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        _schema_validator().validate(_merged({"accounts": [account]}))


# --------------------------------------------------------------------------- dashboard


def test_dashboard_filters_and_splits_the_labelled_metrics_by_account() -> None:
    dashboard = json.loads((CHART / "dashboards" / "klaviyo-relay.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "account"]
    assert "klaviyo_relay_klaviyo_requests_total" in variable["query"]["query"]
    assert variable["includeAll"] and variable["allValue"] == ".*"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    selectors = [
        (m.group(1), m.group(2))
        for e in exprs
        for m in re.finditer(r"\b(klaviyo_relay_[a-z_]+?)(?:_bucket)?\{([^}]*)\}", e)
    ]
    for metric, labels in selectors:
        if metric in ACCOUNT_METRICS:
            assert 'account=~"$account"' in labels, f"{metric} not filtered by account"
    # Every labelled metric is somewhere split by account.
    split = {m for m in ACCOUNT_METRICS for e in exprs if m in e and "by (account" in e}
    assert split == set(ACCOUNT_METRICS)


# --------------------------------------------------------------------------- alerts


@needs_helm
@needs_promtool
def test_alerts_per_account(tmp_path: Path) -> None:
    """Halted, throttled, OAuth refreshes failing and an expiring token: one alert per account
    concerned, never one account's health hiding another's trouble."""
    assert PROMTOOL is not None
    rules = _rules_file(tmp_path)
    up = _series("up", {"pod": "p1"}, "1x60")
    shop, merchant = {"pod": "p1", "account": "shop-eu"}, {"pod": "p1", "account": "merchant-1"}
    requests = {"endpoint": "create_event", "outcome": "accepted", "status_class": "2xx"}
    refreshes = "klaviyo_relay_oauth_refreshes_total"
    expiry = "klaviyo_relay_oauth_token_expiry_timestamp_seconds"
    tests: list[dict[str, Any]] = [
        {  # merchant-1's grant revoked at minute 0: it alone is halted
            "interval": "1m",
            "input_series": [
                up,
                _series("klaviyo_relay_halted", shop, "0x10"),
                _series("klaviyo_relay_halted", merchant, "1x10"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "2m",
                    "alertname": "KlaviyoRelayHalted",
                    "exp_alerts": [
                        fired_alert(
                            "KlaviyoRelayHalted",
                            "critical",
                            "Relay p1 halted on a Klaviyo auth failure (account merchant-1)",
                            **merchant,
                        )
                    ],
                }
            ],
        },
        {  # shop-eu: 10 % of its requests answered 429; merchant-1: none, ten times the volume
            "interval": "1m",
            "input_series": [
                up,
                _series("klaviyo_relay_klaviyo_requests_total", {**shop, **requests}, "0+540x30"),
                _series(
                    "klaviyo_relay_klaviyo_requests_total",
                    {**shop, **requests, "outcome": "retryable", "status_class": "4xx"},
                    "0+60x30",
                ),
                _series(
                    "klaviyo_relay_klaviyo_throttled_total",
                    {**shop, "endpoint": "create_event"},
                    "0+60x30",
                ),
                _series(
                    "klaviyo_relay_klaviyo_requests_total", {**merchant, **requests}, "0+6000x30"
                ),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "25m",
                    "alertname": "KlaviyoRelayThrottled",
                    "exp_alerts": [
                        fired_alert(
                            "KlaviyoRelayThrottled",
                            "warning",
                            "10% of create_event requests answered 429 (account shop-eu)",
                            account="shop-eu",
                            endpoint="create_event",
                        )
                    ],
                }
            ],
        },
        {  # merchant-1's refreshes fail from minute 20 while shop-eu's keep working
            "interval": "1m",
            "input_series": [
                up,
                _series(refreshes, {**shop, "result": "ok"}, "0+1x60"),
                _series(refreshes, {**merchant, "result": "ok"}, "0+1x5 5x55"),
                _series(refreshes, {**merchant, "result": "invalid_grant"}, "0x20 1x40"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "27m",
                    "alertname": "KlaviyoRelayOAuthRefreshFailing",
                    "exp_alerts": [
                        fired_alert(
                            "KlaviyoRelayOAuthRefreshFailing",
                            "critical",
                            "OAuth token refreshes fail (invalid_grant) and none succeeds"
                            " (account merchant-1)",
                            account="merchant-1",
                            result="invalid_grant",
                        )
                    ],
                }
            ],
        },
        {  # merchant-1's token expires at 10m and is never replaced; shop-eu's lasts an hour
            "interval": "1m",
            "input_series": [
                up,
                _series(expiry, shop, "3600x20"),
                _series(expiry, merchant, "600x20"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "KlaviyoRelayOAuthTokenExpiring",
                    "exp_alerts": [],
                },
                {
                    "eval_time": "12m",
                    "alertname": "KlaviyoRelayOAuthTokenExpiring",
                    "exp_alerts": [
                        fired_alert(
                            "KlaviyoRelayOAuthTokenExpiring",
                            "critical",
                            "Relay p1's OAuth access token for account merchant-1 expires in"
                            " -2m 0s",
                            **merchant,
                        )
                    ],
                },
            ],
        },
    ]
    _promtool_test(rules, tests)


@needs_helm
@needs_promtool
def test_keda_quota_trigger_counts_pods_not_their_accounts(tmp_path: Path) -> None:
    """With several accounts each pod exports a quota share per account: the scaler's pod count
    (the formula's ``pods × lag target`` while saturated) must still be the pods'."""
    triggers = {
        t["name"]: t for t in one(render_ci("keda-values.yaml"), "ScaledObject")["spec"]["triggers"]
    }
    rules = tmp_path / "rules.yaml"
    rules.write_text("groups: []\n")
    shares = [
        _series("klaviyo_relay_quota_share", {"pod": pod, "account": account}, "0.5x5")
        for pod in ("p1", "p2")
        for account in ("north", "south", "default")
    ]
    test = {
        "interval": "1m",
        "input_series": shares,
        "promql_expr_test": [
            {
                "expr": triggers["pods"]["metadata"]["query"],
                "eval_time": "2m",
                "exp_samples": [{"labels": "{}", "value": 2}],
            }
        ],
    }
    _promtool_test(rules, [test])
