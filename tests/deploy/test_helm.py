"""The Helm chart: lints, renders valid Kubernetes objects for every supported shape, rejects bad
values, produces settings the relay accepts, and its alerts and dashboard use real metrics.

Needs helm (and promtool for the rule checks) on PATH or in the cache dir written by
dev/install-tools.sh; the tests that need them skip, saying so, when they are absent.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from consumer.observability.metrics import REGISTRY
from consumer.pipeline.relay import DLQ_FLUSH_SECONDS
from consumer.pipeline.source import CLOSE_SECONDS, FINAL_COMMIT_SECONDS
from consumer.settings import Settings, load_settings
from tests.fixtures.helm import (
    CHART,
    FULLNAME,
    HELM,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    by_kind,
    find_tool,
    one,
    render,
    run_helm,
    values_args,
)

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# Custom resources kubernetes-validate has no schema for; checked structurally below.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}
REQUIRED_ALERTS = {
    "KlaviyoRelayHalted",
    "KlaviyoRelayOAuthRefreshFailing",
    "KlaviyoRelayLagGrowing",
    "KlaviyoRelayDeadLetters",
    "KlaviyoRelayThrottled",
    "KlaviyoRelayNoDeliveries",
    "KlaviyoRelayEventStuck",
    "KlaviyoRelayRevisionDeprecated",
    "KlaviyoRelayOAuthTokenExpiring",
}
# Per-account settings (KLAVIYO_ACCOUNT_<NAME>_<FIELD>, issue 16): named by the account, so not
# fields of their own; tests/deploy/test_helm_accounts.py checks them against KLAVIYO_ACCOUNTS.
PER_ACCOUNT = re.compile(
    r"^KLAVIYO_ACCOUNT_[A-Z0-9_]+_(API_KEY|BASE_URL|RATE_LIMIT_SHARE|OAUTH_\w+)$"
)


PROMTOOL = find_tool("promtool")
needs_helm = pytest.mark.skipif(
    HELM is None,
    reason="helm not found on PATH or in ~/.cache/klaviyo-relay/bin: run dev/install-tools.sh",
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found on PATH or in ~/.cache/klaviyo-relay/bin: run dev/install-tools.sh",
)


def _template(*args: str) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart with ``args``, failing or not."""
    return run_helm("template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *args)


@cache
def render_ci(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(render([CHART / "ci" / name]))


def render_notes(tmp: Path, args: list[str] | None = None) -> str:
    """NOTES.txt as `helm install` would print it (which needs a cluster; template does not)."""
    chart = tmp / "chart"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ include "klaviyo-relay/templates/NOTES.txt" . | quote }}}\n'
    )
    result = run_helm(
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        "--show-only",
        "templates/zz-notes.yaml",
        *(args or []),
    )
    assert result.returncode == 0, result.stderr
    return str(yaml.safe_load(result.stdout)["data"]["notes"])


def config_of(docs: Any) -> dict[str, str]:
    """The settings ConfigMap's data (the dashboard ConfigMap may sit beside it)."""
    (found,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == FULLNAME]
    data: dict[str, str] = found["data"]
    return data


def pod_spec(docs: Any) -> dict[str, Any]:
    """The relay's pod spec: the Deployment's, or the CronJob's (mode: cronjob)."""
    (workload,) = by_kind(docs, "Deployment") + by_kind(docs, "CronJob")
    spec = workload["spec"]
    template = (
        spec["jobTemplate"]["spec"]["template"] if "jobTemplate" in spec else spec["template"]
    )
    pod: dict[str, Any] = template["spec"]
    return pod


def relay_container(docs: Any) -> dict[str, Any]:
    (container,) = pod_spec(docs)["containers"]
    result: dict[str, Any] = container
    return result


# --------------------------------------------------------------------------- lint and render


@needs_helm
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.stem)
def test_helm_lint_strict(values_file: Path) -> None:
    result = run_helm(
        "lint", "--strict", str(CHART), "-f", str(values_file), "--kube-version", KUBE_VERSION
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_helm
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.stem)
def test_rendered_objects_are_valid_kubernetes(values_file: Path) -> None:
    docs = render_ci(values_file.name)
    assert len(by_kind(docs, "Deployment") + by_kind(docs, "CronJob")) == 1
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            assert doc["metadata"]["namespace"] == NAMESPACE
            assert isinstance(doc["spec"], dict) and doc["spec"]
            continue
        # Raises ValidationError with the path of the offending field.
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_ci_matrix_covers_every_shape() -> None:
    stems = {p.stem for p in CI_VALUES}
    assert stems >= {
        "default-values",
        "existing-secret-values",
        "keda-values",
        "hpa-values",
        "monitoring-values",
        "networkpolicy-values",
        "cronjob-values",
        "oauth-values",
        "accounts-values",
        "accounts-cronjob-values",
    }


# --------------------------------------------------------------------------- the Deployment


@needs_helm
def test_deployment_is_hardened() -> None:
    docs = render_ci("default-values.yaml")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = relay_container(docs)
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert {"/tmp"} <= {m["mountPath"] for m in container["volumeMounts"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"] == ["run"]
    # Old pod first: a surge pod may get no partition and so never turn ready.
    assert one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


@needs_helm
def test_grace_period_outlasts_the_drain(tmp_path: Path) -> None:
    for drain in (5, 25, 120):
        docs = render(values={"relay": {"drainTimeoutSeconds": drain}}, tmp=tmp_path)
        config = config_of(docs)
        grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert int(config["DRAIN_TIMEOUT_SECONDS"]) == drain
        # The drain, then the final commit, the consumer's close and the dead-letter flush.
        worst = drain + FINAL_COMMIT_SECONDS + CLOSE_SECONDS + DLQ_FLUSH_SECONDS
        assert grace > worst
    for grace in (30, 50):  # not beyond the drain; not beyond the worst case after it
        result = _template(
            "--set",
            "relay.drainTimeoutSeconds=30",
            "--set",
            f"terminationGracePeriodSeconds={grace}",
        )
        assert result.returncode != 0
        assert "must exceed relay.drainTimeoutSeconds + 20" in result.stderr


@needs_helm
def test_config_checksum_rolls_pods_when_settings_change(tmp_path: Path) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        docs = render(values=values, tmp=tmp_path)
        annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return {k: v for k, v in annotations.items() if k.startswith("checksum/")}

    base = checksums({})
    assert set(base) == {"checksum/config", "checksum/secret"}
    changed = checksums({"relay": {"logLevel": "DEBUG"}})
    assert changed["checksum/config"] != base["checksum/config"]
    assert checksums({})["checksum/config"] == base["checksum/config"]  # stable otherwise
    assert (
        checksums({"klaviyo": {"apiKey": "pk_other"}})["checksum/secret"] != base["checksum/secret"]
    )


def _env_of(docs: Any) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    config = config_of(docs)
    env = {e["name"]: e for e in relay_container(docs)["env"]}
    return config, env


@needs_helm
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.stem)
def test_rendered_settings_are_accepted_by_the_relay(
    values_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, env = _env_of(render_ci(values_file.name))
    names = {field.upper() for field in Settings.model_fields}
    names |= {k for k in (*config, *env) if PER_ACCOUNT.match(k)}
    unknown = set(config) - names - {"TOPICS"} - set(env)
    assert not unknown, f"ConfigMap keys the relay does not read: {unknown}"
    assert set(env) <= names
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key)
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    for key in env:  # values from Secrets: any placeholder will do (a JSON object for maps)
        monkeypatch.setenv(key, "{}" if key.endswith("_CONFIG") else "from-secret")
    settings = load_settings()
    assert settings.metrics_port == int(config["METRICS_PORT"])
    # Unset (the group derives each pod's share) unless the values fix one.
    explicit = config.get("RATE_LIMIT_SHARE")
    assert settings.rate_limit_share == (None if explicit is None else float(explicit))


@needs_helm
def test_default_install_expects_a_key_secret_and_says_how(tmp_path: Path) -> None:
    docs = render_ci("default-values.yaml")
    config, env = _env_of(docs)
    assert not by_kind(docs, "Secret")
    ref = env["KLAVIYO_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": f"{FULLNAME}-klaviyo", "key": "api-key"}
    assert "KLAVIYO_API_KEY" not in config
    assert f"create secret generic {FULLNAME}-klaviyo" in render_notes(tmp_path)


@needs_helm
def test_notes_without_warning_once_a_key_is_configured(tmp_path: Path) -> None:
    notes = render_notes(tmp_path, ["--set", "klaviyo.existingSecret=klaviyo-api"])
    assert "WARNING" not in notes
    assert "follows the consumer group" in notes
    fixed = render_notes(tmp_path / "fixed", ["--set", "relay.rateLimitShare=0.25"])
    assert "RATE_LIMIT_SHARE=0.25 of the account" in fixed


@needs_helm
def test_api_key_value_goes_to_a_secret_only(tmp_path: Path) -> None:
    key = "pk_test_0123456789abcdef"
    docs = render(values={"klaviyo": {"apiKey": key}}, tmp=tmp_path)
    secret = one(docs, "Secret")
    assert base64.b64decode(secret["data"]["api-key"]).decode() == key
    config, env = _env_of(docs)
    assert key not in json.dumps(config)
    assert env["KLAVIYO_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]


@needs_helm
def test_existing_secrets_for_klaviyo_and_kafka() -> None:
    docs = render_ci("existing-secret-values.yaml")
    assert not by_kind(docs, "Secret")
    config, env = _env_of(docs)
    assert env["KLAVIYO_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "klaviyo-api",
        "key": "private-key",
    }
    assert env["KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"]["name"] == "kafka-relay-user"
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert config["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    mounts = {m["name"]: m for m in relay_container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["kafka-tls"]["secret"]["secretName"] == "kafka-ca"
    assert mounts["kafka-tls"]["readOnly"] is True
    assert config["KAFKA_SSL_CA_LOCATION"] == mounts["kafka-tls"]["mountPath"] + "/ca.crt"
    assert json.loads(config["TOPICS"]) == [
        "shop.orders.placed",
        "shop.accounts.password-reset-requested",
    ]
    assert json.loads(config["KAFKA_EXTRA_CONFIG"]) == {"statistics.interval.ms": "15000"}
    assert env["KAFKA_SECRET_EXTRA_CONFIG"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-oauth",
        "key": "kafka-secret-extra-config",
    }
    assert env["SCHEMA_REGISTRY_BEARER_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "schema-registry-token",
        "key": "token",
    }
    assert "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO" not in env
    assert config["SCHEMA_REGISTRY_LOGICAL_CLUSTER"] == "lsrc-123"
    assert config["SCHEMA_REGISTRY_TIMEOUT_SECONDS"] == "5"


@needs_helm
def test_registry_credential_and_secret_kafka_properties_go_to_a_secret_only(
    tmp_path: Path,
) -> None:
    user_info = "relay:pa55-registry"
    secret_properties = {"sasl.oauthbearer.client.secret": "s3cr3t-oauth"}
    docs = render(
        values={
            "schemaRegistry": {
                "url": "https://sr.internal:8081",
                "auth": {"type": "basic", "credential": user_info},
            },
            "kafka": {"secretExtraConfig": secret_properties},
        },
        tmp=tmp_path,
    )
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    (secret,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-settings")]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["schema-registry-credential"] == user_info
    assert json.loads(data["kafka-secret-extra-config"]) == secret_properties
    config, env = _env_of(docs)
    assert "pa55" not in json.dumps(config) and "s3cr3t" not in json.dumps(config)
    for name, key in [
        ("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "schema-registry-credential"),
        ("KAFKA_SECRET_EXTRA_CONFIG", "kafka-secret-extra-config"),
    ]:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": key}
    assert "SCHEMA_REGISTRY_BEARER_TOKEN" not in env


# --------------------------------------------------------------------------- scaling


@needs_helm
@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 1},
        {"replicaCount": 3},
        {"autoscaling": {"keda": {"enabled": True, "maxReplicaCount": 4}}},
        {"autoscaling": {"hpa": {"enabled": True, "maxReplicas": 8}}},
    ],
    ids=["one", "three", "keda", "hpa"],
)
def test_rate_limit_share_is_left_to_the_group_whatever_the_scale(
    values: dict[str, Any], tmp_path: Path
) -> None:
    # A share derived from replicas or maxReplicas is wrong as soon as the scale moves (a
    # surge, a manual scale, one pod of four using a quarter): the relay derives it instead.
    assert "RATE_LIMIT_SHARE" not in config_of(render(values=values, tmp=tmp_path))


@needs_helm
def test_an_explicit_rate_limit_share_overrides_the_group(tmp_path: Path) -> None:
    config = config_of(render(values={"relay": {"rateLimitShare": "0.5"}}, tmp=tmp_path))
    assert config["RATE_LIMIT_SHARE"] == "0.5"


@needs_helm
@pytest.mark.parametrize(
    ("values_file", "kind", "other"),
    [
        ("keda-values.yaml", "ScaledObject", "HorizontalPodAutoscaler"),
        ("hpa-values.yaml", "HorizontalPodAutoscaler", "ScaledObject"),
    ],
)
def test_autoscaling_on_lag_one_or_the_other(values_file: str, kind: str, other: str) -> None:
    docs = render_ci(values_file)
    scaler = one(docs, kind)
    assert not by_kind(docs, other)
    assert "replicas" not in one(docs, "Deployment")["spec"]  # the autoscaler owns it
    config = config_of(docs)
    assert "RATE_LIMIT_SHARE" not in config
    if kind == "ScaledObject":
        trigger = scaler["spec"]["triggers"][0]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == config["KAFKA_GROUP_ID"]
        assert trigger["metadata"]["sasl"] == "scram_sha256"
        auth = one(docs, "TriggerAuthentication")
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        params = {t["parameter"] for t in auth["spec"]["secretTargetRef"]}
        assert params == {"username", "password", "ca", "cert", "key"}
    else:
        metric = scaler["spec"]["metrics"][0]["external"]["metric"]
        assert metric["name"] == "klaviyo_relay_consumer_lag_messages"


@needs_helm
def test_keda_holds_scale_out_back_while_the_quota_is_saturated(tmp_path: Path) -> None:
    scaler = one(render_ci("keda-values.yaml"), "ScaledObject")
    triggers = {t["name"]: t for t in scaler["spec"]["triggers"]}
    assert [t["type"] for t in triggers.values()] == ["kafka", "prometheus", "prometheus"]
    modifiers = scaler["spec"]["advanced"]["scalingModifiers"]
    # Saturated: no more replicas than run now (pods × the per-pod lag target); else the lag.
    assert modifiers["formula"] == "quota >= 0.9 ? min(lag, pods * 1000) : lag"
    assert modifiers["target"] == triggers["lag"]["metadata"]["lagThreshold"]
    assert set(re.findall(r"[a-z]+(?= |\)|,)", modifiers["formula"])) - {"min"} <= set(triggers)
    # The queries read metrics the relay exports, from its own metrics Service's job.
    exported = {m.name for m in REGISTRY.collect()}
    for name in ("quota", "pods"):
        query = triggers[name]["metadata"]["query"]
        (metric,) = re.findall(r"(klaviyo_relay_\w+)\{", query)
        assert metric in exported
        assert f'job="{FULLNAME}-metrics"' in query and f'namespace="{NAMESPACE}"' in query
    # Off: the plain lag trigger, nothing else.
    plain = one(
        render(values={"autoscaling": {"keda": {"enabled": True}}}, tmp=tmp_path), "ScaledObject"
    )
    assert [t["type"] for t in plain["spec"]["triggers"]] == ["kafka"]
    assert "advanced" not in plain["spec"]


# --------------------------------------------------------------------------- the CronJob

ALWAYS_ON_PARTS = [
    {"autoscaling": {"hpa": {"enabled": True}}},
    {"autoscaling": {"keda": {"enabled": True}}},
    {"metrics": {"serviceMonitor": {"enabled": True}}},
    {"metrics": {"prometheusRule": {"enabled": True}}},
]


@needs_helm
def test_cronjob_replaces_the_deployment_and_its_always_on_parts() -> None:
    docs = render_ci("cronjob-values.yaml")
    spec = one(docs, "CronJob")["spec"]
    for kind in ("Deployment", "PodDisruptionBudget", "Service", "HorizontalPodAutoscaler"):
        assert not by_kind(docs, kind), kind
    assert spec["schedule"] == "15 * * * *"
    assert spec["timeZone"] == "Europe/Berlin"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    job, pod, container = spec["jobTemplate"]["spec"], pod_spec(docs), relay_container(docs)
    assert pod["restartPolicy"] == "Never"
    assert container["args"] == ["run", "--until-caught-up", "--max-duration", "2400"]
    assert "readinessProbe" not in container
    # The relay gives up, drains and commits before Kubernetes stops the run.
    assert job["activeDeadlineSeconds"] > 2400 + pod["terminationGracePeriodSeconds"]
    assert job["backoffLimit"] == 0
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "Ignore"
    assert rule["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    # One run at a time: its share follows the group, so it holds every partition and all the quota.
    assert "RATE_LIMIT_SHARE" not in config_of(docs)


@needs_helm
def test_cronjob_runs_the_deployments_pod(tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "ci" / "cronjob-values.yaml").read_text())
    deployment = render(values={**values, "mode": "deployment"}, tmp=tmp_path)
    cronjob = render_ci("cronjob-values.yaml")
    job_pod, deployment_pod = pod_spec(cronjob), pod_spec(deployment)
    for key in ("serviceAccountName", "securityContext", "volumes", "topologySpreadConstraints"):
        assert job_pod[key] == deployment_pod[key], key
    job_container, deployment_container = relay_container(cronjob), relay_container(deployment)
    for key in ("image", "env", "envFrom", "volumeMounts", "securityContext", "resources"):
        assert job_container[key] == deployment_container[key], key
    assert {e["name"] for e in job_container["env"]} >= {"KLAVIYO_API_KEY", "KAFKA_SASL_PASSWORD"}


@needs_helm
@pytest.mark.parametrize("values", ALWAYS_ON_PARTS, ids=json.dumps)
def test_cronjob_refuses_the_always_on_parts(values: dict[str, Any], tmp_path: Path) -> None:
    result = _template(*values_args({"mode": "cronjob", **values}, [], tmp_path))
    assert result.returncode != 0
    assert "has no use with mode=cronjob" in result.stderr, result.stderr


@needs_helm
def test_cronjob_notes_say_how_to_follow_the_runs(tmp_path: Path) -> None:
    notes = render_notes(tmp_path, ["--set", "mode=cronjob"])
    assert f"create job --from=cronjob/{FULLNAME}" in notes
    assert "port-forward deploy/" not in notes


@needs_helm
def test_cronjob_deadline_outlasts_the_run(tmp_path: Path) -> None:
    values = {"mode": "cronjob", "cronjob": {"activeDeadlineSeconds": 3000}}
    result = _template(*values_args(values, [], tmp_path))
    assert result.returncode != 0
    assert "must exceed cronjob.maxDurationSeconds + terminationGracePeriodSeconds" in (
        result.stderr
    )


# --------------------------------------------------------------------------- monitoring


@needs_helm
def test_service_monitor_scrapes_the_metrics_port() -> None:
    docs = render_ci("monitoring-values.yaml")
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    port = relay_container(docs)["ports"][0]
    assert port["name"] == "metrics"
    assert str(port["containerPort"]) == config_of(docs)["METRICS_PORT"]


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bklaviyo_relay_[a-z_]+\b", expr))


def _exposed_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
        if family.type == "info":
            names.add(family.name + "_info")
    return names


def _rules(docs: Any) -> list[dict[str, Any]]:
    rule = one(docs, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


@needs_helm
def test_alert_rules_cover_the_runbook_and_use_real_metrics() -> None:
    rules = _rules(render_ci("monitoring-values.yaml"))
    alerts = {r["alert"]: r for r in rules}
    assert set(alerts) >= REQUIRED_ALERTS
    exposed = _exposed_names()
    for name, rule in alerts.items():
        unknown = _metric_names(rule["expr"]) - exposed
        assert not unknown, f"{name} uses metrics the relay does not expose: {unknown}"
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["labels"]["team"] == "checkout"
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["annotations"]["runbook_url"].startswith("https://example.com/")
        # Scoped to this release, so two relays in a cluster page separately.
        assert f'namespace="{NAMESPACE}"' in rule["expr"]
    assert alerts["KlaviyoRelayLagGrowing"]["for"] == "10m"


def test_dashboard_answers_the_four_questions_with_real_metrics() -> None:
    dashboard = json.loads((CHART / "dashboards" / "klaviyo-relay.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert any("flowing" in r for r in rows)
    assert any("behind" in r for r in rows)
    assert any("throttling" in r for r in rows)
    assert any("dead-letter" in r for r in rows)
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = set().union(*(_metric_names(e) for e in exprs))
    exposed = _exposed_names()
    assert not used - exposed, f"dashboard uses unknown metrics: {used - exposed}"
    # Every metric family the relay exposes appears on the dashboard.
    families = {f.name for f in REGISTRY.collect()}
    shown = {name for name in families if any(name in e for e in exprs)}
    assert not families - shown, f"not on the dashboard: {families - shown}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {
        "datasource",
        "namespace",
        "job",
        "topic",
    }


@needs_helm
def test_dashboard_ships_as_a_sidecar_configmap() -> None:
    docs = render_ci("monitoring-values.yaml")
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Relays"
    shipped = json.loads(cm["data"]["klaviyo-relay.json"])
    assert shipped == json.loads((CHART / "dashboards" / "klaviyo-relay.json").read_text())


@needs_helm
def test_network_policy_limits_traffic() -> None:
    docs = render_ci("networkpolicy-values.yaml")
    policy = one(docs, "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["ingress"]
    assert [p["port"] for p in ingress["ports"]] == ["metrics"]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"]
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 9092, 9093, 8081, 443}
    assert not by_kind(render_ci("default-values.yaml"), "NetworkPolicy")


# --------------------------------------------------------------------------- values schema

INVALID_VALUES: list[tuple[str, dict[str, Any]]] = [
    ("unknown top-level key", {"replicas": 3}),
    ("unknown nested key", {"kafka": {"bootstrap": "kafka:9092"}}),
    ("replicaCount not a number", {"replicaCount": "two"}),
    ("bootstrap servers without port", {"kafka": {"bootstrapServers": "kafka"}}),
    ("bad security protocol", {"kafka": {"securityProtocol": "TLS"}}),
    ("SASL without credentials", {"kafka": {"sasl": {"mechanism": "SCRAM-SHA-512"}}}),
    ("registry auth without credential", {"schemaRegistry": {"auth": {"type": "basic"}}}),
    ("unknown registry auth type", {"schemaRegistry": {"auth": {"type": "oauth"}}}),
    ("non-string librdkafka property", {"kafka": {"extraConfig": {"fetch.min.bytes": 1}}}),
    ("bad send mode", {"relay": {"sendMode": "fast"}}),
    ("share above 1", {"relay": {"rateLimitShare": "1.5"}}),
    ("bad log level", {"relay": {"logLevel": "LOUD"}}),
    ("privileged metrics port", {"metrics": {"port": 80}}),
    ("bad pull policy", {"image": {"pullPolicy": "Sometimes"}}),
    ("both autoscalers", {"autoscaling": {"hpa": {"enabled": True}, "keda": {"enabled": True}}}),
    ("KEDA scaling to zero", {"autoscaling": {"keda": {"enabled": True, "minReplicaCount": 0}}}),
    (
        "KEDA quota trigger without Prometheus",
        {"autoscaling": {"keda": {"enabled": True, "quota": {"enabled": True}}}},
    ),
    (
        "quota saturation above 1",
        {"autoscaling": {"keda": {"quota": {"saturationThreshold": 1.5}}}},
    ),
    ("bad scrape interval", {"metrics": {"serviceMonitor": {"interval": "often"}}}),
    ("unknown mode", {"mode": "daemonset"}),
    ("run deadline under a minute", {"cronjob": {"maxDurationSeconds": 5}}),
    ("unknown cronjob key", {"cronjob": {"concurrencyPolicy": "Allow"}}),
]


@cache
def _schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((CHART / "values.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _merged(overrides: dict[str, Any]) -> dict[str, Any]:
    def merge(base: Any, extra: Any) -> Any:
        if isinstance(base, dict) and isinstance(extra, dict):
            return {k: merge(base.get(k), extra[k]) if k in base else extra[k] for k in extra} | {
                k: v for k, v in base.items() if k not in extra
            }
        return extra

    merged: dict[str, Any] = merge(yaml.safe_load((CHART / "values.yaml").read_text()), overrides)
    return merged


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.stem)
def test_schema_accepts_the_documented_shapes(values_file: Path) -> None:
    _schema_validator().validate(_merged(yaml.safe_load(values_file.read_text()) or {}))


@pytest.mark.parametrize(("case", "values"), INVALID_VALUES, ids=[c for c, _ in INVALID_VALUES])
def test_schema_rejects_invalid_values(case: str, values: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        _schema_validator().validate(_merged(values))


@needs_helm
@pytest.mark.parametrize(("case", "values"), INVALID_VALUES, ids=[c for c, _ in INVALID_VALUES])
def test_helm_refuses_invalid_values(case: str, values: dict[str, Any], tmp_path: Path) -> None:
    result = _template(*values_args(values, [], tmp_path))
    assert result.returncode != 0, f"{case}: accepted"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr


def test_every_value_is_documented() -> None:
    """Each key of values.yaml has a comment right above it, or sits inside a documented
    block (the example content of a documented map, e.g. securityContext)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    documented_blocks: list[tuple[int, bool]] = []  # (indent, documented) of open blocks
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)(?:- )?([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while documented_blocks and documented_blocks[-1][0] >= indent:
            documented_blocks.pop()
        commented = i > 0 and lines[i - 1].strip().startswith("#")
        inherited = any(doc for _, doc in documented_blocks)
        is_block = line.rstrip().endswith(":")
        if is_block:
            documented_blocks.append((indent, commented or inherited))
        elif not (commented or inherited):
            undocumented.append(match.group(2))
    assert not undocumented, f"undocumented values: {undocumented}"


# --------------------------------------------------------------------------- promtool


def _rules_file(tmp_path: Path) -> Path:
    rule = one(render_ci("monitoring-values.yaml"), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


@needs_helm
@needs_promtool
def test_promtool_check_rules(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(_rules_file(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _promtool_test(rules: Path, tests: list[dict[str, Any]]) -> None:
    """Run promtool's unit ``tests`` against the rules file ``rules`` (in the same directory)."""
    assert PROMTOOL is not None
    spec = rules.with_name("alerts_test.yaml")
    spec.write_text(
        yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests})
    )
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=rules.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    base = {"namespace": NAMESPACE, "job": f"{FULLNAME}-metrics", **labels}
    inner = ", ".join(f'{k}="{v}"' for k, v in base.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def fired_alert(name: str, severity: str, summary: str, **labels: str) -> dict[str, Any]:
    """An alert as promtool should see it fire: the fixed texts come from the rule, the summary,
    which is templated, is spelled out."""
    described = {r["alert"]: r["annotations"] for r in _rules(render_ci("monitoring-values.yaml"))}
    return {
        "exp_labels": {
            "severity": severity,
            "team": "checkout",
            "namespace": NAMESPACE,
            "job": f"{FULLNAME}-metrics",
            **labels,
        },
        "exp_annotations": {**described[name], "summary": summary},
    }


@needs_helm
@needs_promtool
def test_alerts_fire_on_the_failures_they_describe(tmp_path: Path) -> None:
    """promtool unit tests: each alert fires on a synthetic incident (and not before its `for`)."""
    assert PROMTOOL is not None
    rules = _rules_file(tmp_path)

    up = _series("up", {"pod": "p1"}, "1x60")
    topic = "shop.orders.placed"
    p0 = {"pod": "p1", "topic": topic, "partition": "0"}
    delivered = {"pod": "p1", "topic": topic, "metric": "Placed Order"}
    ok_requests = {
        "pod": "p1",
        "endpoint": "create_event",
        "outcome": "accepted",
        "status_class": "2xx",
    }
    tests: list[dict[str, Any]] = [
        {  # a revoked key: halted from minute 0
            "interval": "1m",
            "input_series": [up, _series("klaviyo_relay_halted", {"pod": "p1"}, "1x10")],
            "alert_rule_test": [
                {"eval_time": "30s", "alertname": "KlaviyoRelayHalted", "exp_alerts": []},
                {
                    "eval_time": "2m",
                    "alertname": "KlaviyoRelayHalted",
                    "exp_alerts": [
                        fired_alert(
                            "KlaviyoRelayHalted",
                            "critical",
                            "Relay p1 halted on a Klaviyo auth failure",
                            pod="p1",
                        ),
                    ],
                },
            ],
        },
        {  # lag climbs by 100 a minute; nothing is delivered
            "interval": "1m",
            "input_series": [
                up,
                _series("klaviyo_relay_consumer_lag_messages", p0, "200+100x30"),
                _series("klaviyo_relay_events_delivered_total", delivered, "50x30"),
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "KlaviyoRelayLagGrowing", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "KlaviyoRelayLagGrowing",
                    "exp_alerts": [
                        fired_alert(
                            "KlaviyoRelayLagGrowing",
                            "warning",
                            f"Lag on {topic} has grown for 10 minutes (2.2k messages)",
                            topic=topic,
                        ),
                    ],
                },
                {"eval_time": "5m", "alertname": "KlaviyoRelayNoDeliveries", "exp_alerts": []},
                {
                    "eval_time": "25m",
                    "alertname": "KlaviyoRelayNoDeliveries",
                    "exp_alerts": [
                        fired_alert(
                            "KlaviyoRelayNoDeliveries",
                            "critical",
                            "No event delivered to Klaviyo for 10 minutes while 2.7k messages wait",
                        ),
                    ],
                },
            ],
        },
        {  # lag steady and deliveries flowing: healthy, nothing fires
            "interval": "1m",
            "input_series": [
                up,
                _series("klaviyo_relay_consumer_lag_messages", p0, "150x30"),
                _series("klaviyo_relay_events_delivered_total", delivered, "0+600x30"),
                _series("klaviyo_relay_klaviyo_requests_total", ok_requests, "0+600x30"),
                _series("klaviyo_relay_oldest_unfinished_event_age_seconds", p0, "3x30"),
            ],
            "alert_rule_test": [
                {"eval_time": "25m", "alertname": name, "exp_alerts": []}
                for name in sorted(
                    REQUIRED_ALERTS
                    | {"KlaviyoRelayDown", "KlaviyoRelayKlaviyoErrors", "KlaviyoRelayEventStuck"}
                )
            ],
        },
        {  # 10% of requests throttled, 1 dead letter a second
            "interval": "1m",
            "input_series": [
                up,
                _series("klaviyo_relay_klaviyo_requests_total", ok_requests, "0+540x30"),
                _series(
                    "klaviyo_relay_klaviyo_requests_total",
                    {**ok_requests, "outcome": "retryable", "status_class": "4xx"},
                    "0+60x30",
                ),
                _series(
                    "klaviyo_relay_klaviyo_throttled_total",
                    {"pod": "p1", "endpoint": "create_event"},
                    "0+60x30",
                ),
                _series(
                    "klaviyo_relay_events_dead_lettered_total",
                    {"pod": "p1", "topic": topic, "stage": "handle", "reason": "no_identifier"},
                    "0+60x30",
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
                            "10% of create_event requests answered 429",
                            endpoint="create_event",
                        ),
                    ],
                },
                {
                    "eval_time": "25m",
                    "alertname": "KlaviyoRelayDeadLetters",
                    "exp_alerts": [
                        fired_alert(
                            "KlaviyoRelayDeadLetters",
                            "warning",
                            f"{topic}: 1/s dead-lettered at handle (no_identifier)",
                            topic=topic,
                            stage="handle",
                            reason="no_identifier",
                        ),
                    ],
                },
            ],
        },
        {  # Cloudflare challenges 6 requests a minute, for good from minute 0
            "interval": "1m",
            "input_series": [
                up,
                _series(
                    "klaviyo_relay_klaviyo_edge_answers_total",
                    {"pod": "p1", "status": "403", "kind": "challenge"},
                    "0+6x40",
                ),
                _series(
                    "klaviyo_relay_klaviyo_edge_answers_total",
                    {"pod": "p1", "status": "403", "kind": "html"},
                    "3x40",  # seen once, long ago: no longer rising
                ),
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "KlaviyoRelayEdgeAnswers", "exp_alerts": []},
                {
                    "eval_time": "25m",
                    "alertname": "KlaviyoRelayEdgeAnswers",
                    "exp_alerts": [
                        fired_alert(
                            "KlaviyoRelayEdgeAnswers",
                            "warning",
                            "Klaviyo's edge has answered challenge pages instead of the API"
                            " for 15m",
                            kind="challenge",
                        ),
                    ],
                },
            ],
        },
        {  # one event on partition 0 never finishes; partition 1 keeps flowing
            "interval": "1m",
            "input_series": [
                up,
                _series("klaviyo_relay_oldest_unfinished_event_age_seconds", p0, "0+60x40"),
                _series(
                    "klaviyo_relay_oldest_unfinished_event_age_seconds",
                    {**p0, "partition": "1"},
                    "2x40",
                ),
            ],
            "alert_rule_test": [
                {"eval_time": "17m", "alertname": "KlaviyoRelayEventStuck", "exp_alerts": []},
                {
                    "eval_time": "25m",
                    "alertname": "KlaviyoRelayEventStuck",
                    "exp_alerts": [
                        fired_alert(
                            "KlaviyoRelayEventStuck",
                            "warning",
                            f"An event on {topic}/0 has been unfinished for 25m 0s",
                            topic=topic,
                            partition="0",
                        ),
                    ],
                },
            ],
        },
        {  # no relay scraped at all
            "interval": "1m",
            "input_series": [_series("up", {"pod": "p1"}, "0x10")],
            "alert_rule_test": [
                {
                    "eval_time": "6m",
                    "alertname": "KlaviyoRelayDown",
                    "exp_alerts": [
                        fired_alert(
                            "KlaviyoRelayDown",
                            "critical",
                            f"No relay pod of {FULLNAME}-metrics is being scraped",
                        ),
                    ],
                },
            ],
        },
        {  # a revision 400 days old warns after its hour; one 300 days old does not
            "interval": "1m",
            "input_series": [
                _series("up", {"pod": "p1"}, "1x120"),
                _series("klaviyo_relay_klaviyo_revision_age_days", {"pod": "p1"}, "400x120"),
                _series("klaviyo_relay_klaviyo_revision_age_days", {"pod": "p2"}, "300x120"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "30m",
                    "alertname": "KlaviyoRelayRevisionDeprecated",
                    "exp_alerts": [],
                },
                {
                    "eval_time": "90m",
                    "alertname": "KlaviyoRelayRevisionDeprecated",
                    "exp_alerts": [
                        fired_alert(
                            "KlaviyoRelayRevisionDeprecated",
                            "warning",
                            "The pinned Klaviyo revision is 400 days old",
                        ),
                    ],
                },
            ],
        },
        {  # a stable revision: quiet
            "interval": "1m",
            "input_series": [
                _series("up", {"pod": "p1"}, "1x120"),
                _series("klaviyo_relay_klaviyo_revision_age_days", {"pod": "p1"}, "300x120"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "110m",
                    "alertname": "KlaviyoRelayRevisionDeprecated",
                    "exp_alerts": [],
                },
            ],
        },
    ]
    _promtool_test(rules, tests)


@needs_helm
@needs_promtool
def test_dead_letter_write_failures_alert(tmp_path: Path) -> None:
    """Failed dead-letter writes page once they persist for 5 minutes; one failure that heals
    (a blip) does not."""
    assert PROMTOOL is not None
    rules = _rules_file(tmp_path)
    name = "KlaviyoRelayDeadLetterWritesFailing"
    described = {r["alert"]: r["annotations"] for r in _rules(render_ci("monitoring-values.yaml"))}
    up = _series("up", {"pod": "p1"}, "1x40")
    failing = {"pod": "p1", "error": "unknown_topic_or_part"}
    fired = {
        "exp_labels": {
            "severity": "critical",
            "team": "checkout",
            "namespace": NAMESPACE,
            "job": f"{FULLNAME}-metrics",
            **failing,
        },
        "exp_annotations": {
            **described[name],
            "summary": "Relay p1 cannot write to the dead-letter topic (unknown_topic_or_part)",
        },
    }
    tests: list[dict[str, Any]] = [
        {  # the topic was deleted at minute 2: every retry fails from then on
            "interval": "1m",
            "input_series": [
                up,
                _series("klaviyo_relay_dead_letter_write_failures_total", failing, "0 0 0+4x30"),
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": name, "exp_alerts": []},
                {"eval_time": "12m", "alertname": name, "exp_alerts": [fired]},
            ],
        },
        {  # one refused write at minute 2, then none: quiet once it has healed
            "interval": "1m",
            "input_series": [
                up,
                _series("klaviyo_relay_dead_letter_write_failures_total", failing, "0 0 1x30"),
            ],
            "alert_rule_test": [{"eval_time": "20m", "alertname": name, "exp_alerts": []}],
        },
    ]
    _promtool_test(rules, tests)


# --------------------------------------------------------------------------- OAuth


@needs_helm
def test_oauth_secrets_come_from_an_existing_secret_and_the_store_is_one_secret() -> None:
    docs = render_ci("oauth-values.yaml")
    config, env = _env_of(docs)
    assert "KLAVIYO_API_KEY" not in env
    for name, key in (
        ("KLAVIYO_OAUTH_CLIENT_SECRET", "client-secret"),
        ("KLAVIYO_OAUTH_REFRESH_TOKEN", "refresh-token"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "klaviyo-oauth", "key": key}
        assert name not in config
    store = f"{FULLNAME}-oauth-token"
    assert config["KLAVIYO_OAUTH_CLIENT_ID"] == "relay-app-client-id"
    assert config["KLAVIYO_OAUTH_TOKEN_URL"] == "https://a.klaviyo.com/oauth/token"
    assert config["KLAVIYO_OAUTH_TOKEN_SECRET"] == store
    # The store: a Secret kept across uninstall, which the pods may get and patch, nothing more.
    (secret,) = by_kind(docs, "Secret")
    assert secret["metadata"]["name"] == store
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not secret.get("data")
    (rule,) = one(docs, "Role")["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": [store],
        "verbs": ["get", "patch"],
    }
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "Role")["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one(docs, "ServiceAccount")["metadata"]["name"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True


@needs_helm
def test_without_the_oauth_store_nothing_talks_to_the_api_server(tmp_path: Path) -> None:
    values = {
        "klaviyo": {
            "oauth": {
                "enabled": True,
                "clientId": "app",
                "existingSecret": "klaviyo-oauth",
                "tokenStore": {"enabled": False},
            }
        }
    }
    docs = render(values=values, tmp=tmp_path)
    assert not by_kind(docs, "Role") and not by_kind(docs, "Secret")
    assert "KLAVIYO_OAUTH_TOKEN_SECRET" not in config_of(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    "oauth",
    [{"enabled": True, "clientId": "app"}, {"enabled": True, "existingSecret": "klaviyo-oauth"}],
    ids=["without a secret", "without a client id"],
)
def test_schema_refuses_half_an_oauth_set_up(oauth: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        _schema_validator().validate(_merged({"klaviyo": {"oauth": oauth}}))


@needs_helm
@needs_promtool
def test_oauth_refresh_failing_alert(tmp_path: Path) -> None:
    """Refreshes that keep failing with none succeeding page after 5 minutes; a failure that a
    retry heals (an ok refresh in the same window) does not."""
    assert PROMTOOL is not None
    rules = _rules_file(tmp_path)
    name = "KlaviyoRelayOAuthRefreshFailing"
    described = {r["alert"]: r["annotations"] for r in _rules(render_ci("monitoring-values.yaml"))}
    up = _series("up", {"pod": "p1"}, "1x60")
    fired = {
        "exp_labels": {
            "severity": "critical",
            "team": "checkout",
            "namespace": NAMESPACE,
            "job": f"{FULLNAME}-metrics",
            "result": "invalid_grant",
        },
        "exp_annotations": {
            **described[name],
            "summary": "OAuth token refreshes fail (invalid_grant) and none succeeds",
        },
    }
    refreshes = "klaviyo_relay_oauth_refreshes_total"
    tests: list[dict[str, Any]] = [
        {  # last refreshed at minute 5 (an hour's token), the app uninstalled at minute 20
            "interval": "1m",
            "input_series": [
                up,
                _series(refreshes, {"pod": "p1", "result": "ok"}, "0+1x5 5x55"),
                _series(refreshes, {"pod": "p1", "result": "invalid_grant"}, "0x20 1x40"),
            ],
            "alert_rule_test": [
                {"eval_time": "22m", "alertname": name, "exp_alerts": []},
                {"eval_time": "27m", "alertname": name, "exp_alerts": [fired]},
            ],
        },
        {  # the token endpoint down from minute 20: every attempt fails, none succeeds
            "interval": "1m",
            "input_series": [
                up,
                _series(refreshes, {"pod": "p1", "result": "ok"}, "0+1x20 20x40"),
                _series(refreshes, {"pod": "p1", "result": "unavailable"}, "0x20 1+1x40"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "40m",
                    "alertname": name,
                    "exp_alerts": [
                        {
                            **fired,
                            "exp_labels": {**fired["exp_labels"], "result": "unavailable"},
                            "exp_annotations": {
                                **fired["exp_annotations"],
                                "summary": "OAuth token refreshes fail (unavailable) and none"
                                " succeeds",
                            },
                        }
                    ],
                }
            ],
        },
        {  # the token endpoint failed once, the retry worked: quiet
            "interval": "1m",
            "input_series": [
                up,
                _series(refreshes, {"pod": "p1", "result": "ok"}, "0+1x60"),
                _series(refreshes, {"pod": "p1", "result": "unavailable"}, "0x20 1x40"),
            ],
            "alert_rule_test": [{"eval_time": "30m", "alertname": name, "exp_alerts": []}],
        },
    ]
    _promtool_test(rules, tests)
