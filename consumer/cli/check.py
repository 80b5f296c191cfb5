"""``check``: what an operator runs first. One line per check, non-zero exit if any fails.

- ``config``: the settings validate, the handler routes resolve and the schemas load.
- ``revision``: the age of ``KLAVIYO_REVISION``: ok while stable, a warning (still ok) once
  deprecated, FAIL once retired.
- ``kafka``: the brokers answer, and the source topics and the dead-letter topic exist.
- ``dlq``: the dead-letter topic (``DLQ_TOPIC``) exists, this client may write to it, and how
  large a dead letter it takes (larger ones are parked as ``too_large`` markers).
- ``oauth`` (with ``KLAVIYO_OAUTH_CLIENT_ID``): the token endpoint gives an access token for the
  refresh token; its lifetime and scopes, and where a rotated refresh token is kept.
- ``klaviyo``: the API (or the sandbox) answers a harmless authenticated GET with this key.
- ``scopes``: the key holds the scopes the relay needs. ``profiles:read`` is shown by the GET;
  ``events:write`` and ``profiles:write`` by POSTs whose body has a type no endpoint accepts:
  Klaviyo checks the key's scopes before the body, so 400 means "allowed" and 403 "missing
  scope", and nothing can ever be created.

With ``KLAVIYO_ACCOUNTS`` the Klaviyo lines come once per account, named ``oauth[NAME]``,
``klaviyo[NAME]``, ``scopes[NAME]`` and ``quota[NAME]`` (its windows, share and headroom).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import date
from typing import Any

import click
from confluent_kafka import KafkaException

from consumer.accounts.config import accounts_from, has_credentials
from consumer.cli import settings_from
from consumer.cli.kafka import KafkaUnreachable, admin_client, cluster_metadata, missing_topics
from consumer.cli.preflight import preflight, source_topics
from consumer.klaviyo.auth import Credentials, OAuthCredentials, credentials_from_settings
from consumer.klaviyo.client import KlaviyoClient
from consumer.klaviyo.oauth import GrantRevoked, TokenProvider, TokenUnavailable
from consumer.klaviyo.outcomes import Accepted, Fatal, Outcome, Permanent, Retryable
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.klaviyo.revision import InvalidRevision, Phase, revision_status
from consumer.klaviyo.token_store import TokenStoreError
from consumer.observability.metrics import REGISTRY
from consumer.observability.revision import utc_today
from consumer.pipeline.deadletter_topic import (
    DeadLetterTopicUnchecked,
    DeadLetterTopicUnusable,
    probe_dead_letter_topic,
)
from consumer.settings import Settings, SettingsError

# A JSON:API type no endpoint accepts: the body fails validation after the scope check.
_PROBE_BODY = {"data": {"type": "klaviyo-relay-scope-check", "attributes": {}}}
_WRITE_PROBES = (
    ("events:write", KlaviyoRequest(Endpoint.CREATE_EVENT, "POST", "/api/events", _PROBE_BODY)),
    (
        "profiles:write",
        KlaviyoRequest(Endpoint.PROFILE_IMPORT, "POST", "/api/profile-import", _PROBE_BODY),
    ),
)


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{self.name}: {'ok' if self.ok else 'FAIL'} ({self.detail})"


@click.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for Kafka and for Klaviyo.",
)
@click.pass_context
def check(ctx: click.Context, timeout: float) -> None:
    """Check the configuration, Kafka, Klaviyo and the API key's scopes."""
    settings = settings_from(ctx)
    results = [
        check_config(settings),
        check_revision(settings, utc_today()),
        check_kafka(settings, timeout),
        check_dlq(settings, timeout),
    ]
    for result in results:
        click.echo(result.line())
    # Every probe is a single attempt: check reports, the relay retries.
    single = {"retry_max_attempts": 1, "klaviyo_timeout_seconds": timeout}
    for result in asyncio.run(_check_accounts(settings, single)):
        results.append(result)
        click.echo(result.line())
    if not all(result.ok for result in results):
        sys.exit(1)


async def _check_accounts(settings: Settings, single: dict[str, Any]) -> list[Result]:
    """The Klaviyo lines: of the one account, or a block per account of KLAVIYO_ACCOUNTS with
    its name in brackets (``klaviyo[shop-eu]: ok (...)``) and its quota line."""
    try:
        accounts = accounts_from(settings)
    except SettingsError:
        accounts = None  # the config line says why
    if accounts is None or not accounts.named:
        return await check_klaviyo(settings.model_copy(update=single))
    results = []
    for name, account in accounts.settings.items():
        probe = account.model_copy(update=single)
        block = [*await check_klaviyo(probe, account=name), check_quota(account, name)]
        results += [Result(f"{r.name}[{name}]", r.ok, r.detail) for r in block]
    return results


def check_quota(settings: Settings, account: str) -> Result:
    """An account's own quota: its steady windows, its share, and the headroom Klaviyo's
    rate-limit headers showed to the probes (when the answers carried them)."""
    limits = settings.rate_limits
    parts = []
    for endpoint in (Endpoint.CREATE_EVENT, Endpoint.BULK_CREATE_EVENTS):
        steady = limits[endpoint.value].steady
        parts.append(f"{endpoint.value} {steady.requests}/{steady.seconds:g}s")
    share = settings.rate_limit_share
    parts.append(f"share {share:g}" if share is not None else "share: the group's at run time")
    left = REGISTRY.get_sample_value(
        "klaviyo_relay_rate_limit_remaining",
        {"endpoint": Endpoint.GET_PROFILES.value, "account": account},
    )
    if left is not None:
        parts.append(f"{left:.0f} requests left in the probe's steady window")
    return Result("quota", True, ", ".join(parts))


def check_config(settings: Settings) -> Result:
    """Everything ``run`` checks before it starts (see consumer.cli.preflight)."""
    summary = (
        f"kafka {settings.kafka_bootstrap_servers}, group {settings.kafka_group_id}, "
        f"mode {settings.send_mode.value}, metrics :{settings.metrics_port}"
    )
    problems = preflight(settings, key=False)  # the klaviyo line reports the key
    if problems:
        return Result("config", False, f"{summary}; {'; '.join(problems)}")
    return Result("config", True, f"{summary}, {len(source_topics(settings))} topics")


def check_revision(settings: Settings, today: date) -> Result:
    """Klaviyo retires a revision two years after it ships; deprecated (1-2 years) still works
    but warns, retired fails."""
    try:
        status = revision_status(settings.klaviyo_revision, today)
    except InvalidRevision as exc:
        return Result("revision", False, str(exc))
    return Result("revision", status.phase is not Phase.RETIRED, status.describe())


def check_kafka(settings: Settings, timeout: float) -> Result:
    servers = settings.kafka_bootstrap_servers
    try:
        wanted = [*source_topics(settings), settings.dlq_topic]
    except SettingsError:
        wanted = [settings.dlq_topic]
    try:
        metadata = cluster_metadata(admin_client(settings.kafka_client_config()), servers, timeout)
    except KafkaUnreachable as exc:
        return Result("kafka", False, str(exc))
    except KafkaException as exc:  # the client itself was refused: the config line says why
        return Result("kafka", False, f"{servers}: not checked ({exc.args[0].str()})")
    brokers = len(metadata.brokers)
    missing = missing_topics(metadata, wanted)
    if missing:
        return Result(
            "kafka",
            False,
            f"{servers}: {brokers} broker(s); missing topics: {', '.join(missing)}"
            " (python -m consumer topics create makes them)",
        )
    return Result(
        "kafka",
        True,
        f"{servers}: {brokers} broker(s); {len(wanted) - 1} source topics and the dead-letter"
        f" topic {settings.dlq_topic} exist",
    )


def check_dlq(settings: Settings, timeout: float) -> Result:
    """The start-up check the relay makes on the dead-letter topic, as one line."""
    try:
        topic = probe_dead_letter_topic(settings, timeout)
    except (DeadLetterTopicUnusable, DeadLetterTopicUnchecked) as exc:
        return Result("dlq", False, str(exc))
    limit = "unknown" if topic.topic_max_bytes is None else str(topic.topic_max_bytes)
    return Result(
        "dlq",
        True,
        f"{topic.topic}: {topic.partitions} partition(s), writable; dead letters up to"
        f" {topic.max_bytes} bytes (producer {topic.producer_max_bytes}, topic {limit})",
    )


async def check_klaviyo(settings: Settings, *, account: str = "default") -> list[Result]:
    """The ``oauth`` (with an OAuth app), ``klaviyo`` and ``scopes`` lines."""
    where = f"{settings.klaviyo_base_url}, revision {settings.klaviyo_revision}"
    if not has_credentials(settings):
        return [
            Result("klaviyo", False, f"{where}; KLAVIYO_API_KEY is not set"),
            Result("scopes", False, "not checked without a key"),
        ]
    try:
        credentials = credentials_from_settings(settings, account)
    except TokenStoreError as exc:
        return [
            Result("oauth", False, str(exc)),
            Result("klaviyo", False, f"{where}; not checked without an OAuth token"),
            Result("scopes", False, "not checked without an OAuth token"),
        ]
    results = []
    if isinstance(credentials, OAuthCredentials):
        oauth = await check_oauth(credentials.provider, settings)
        if not oauth.ok:
            await credentials.close()
            return [
                oauth,
                Result("klaviyo", False, f"{where}; not checked without an OAuth token"),
                Result("scopes", False, "not checked without an OAuth token"),
            ]
        results.append(oauth)
    return results + await _check_api(settings, credentials, where, account)


async def check_oauth(provider: TokenProvider, settings: Settings) -> Result:
    """One refresh at the token endpoint: the token's life and scopes, and where a rotated
    refresh token is kept (a rotation during ``check`` is saved there like the relay's)."""
    url = settings.klaviyo_oauth_token_url
    try:
        token = await provider.token()
    except GrantRevoked as exc:
        return Result("oauth", False, f"{url}: {exc.describe()}")
    except TokenUnavailable as exc:
        status = f"{exc.last.status} " if exc.last.status is not None else ""
        return Result("oauth", False, f"{url}: unreachable or unwell: {status}{exc.last.reason}")
    scopes = token.scope or "none named"
    return Result(
        "oauth",
        True,
        f"{url}: client {settings.klaviyo_oauth_client_id}, token for {token.lifetime:.0f} s,"
        f" scopes {scopes}; refresh token kept in {provider.store.describe()}",
    )


async def _check_api(
    settings: Settings, credentials: Credentials, where: str, account: str
) -> list[Result]:
    """The ``klaviyo`` and ``scopes`` lines."""
    accepted = "token accepted" if settings.oauth else "key accepted"
    async with KlaviyoClient(settings, credentials=credentials, account=account) as client:
        ping = await client.ping()
        if not isinstance(ping, Accepted | Permanent) and not (
            isinstance(ping, Fatal) and ping.status == 403
        ):
            return [
                Result("klaviyo", False, f"{where}; {_describe(ping)}"),
                Result("scopes", False, "not checked: the key check above failed"),
            ]
        scopes: list[tuple[str, Outcome]] = [("profiles:read", ping)]
        for scope, probe in _WRITE_PROBES:
            scopes.append((scope, await client.send(probe)))
    reached = Result("klaviyo", True, f"{where}; {accepted}")
    missing = [scope for scope, outcome in scopes if _forbidden(outcome)]
    broken = [
        f"{scope}: {_describe(outcome)}"
        for scope, outcome in scopes
        if not _forbidden(outcome) and not _allowed(scope, outcome)
    ]
    if missing or broken:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + broken
        return [reached, Result("scopes", False, "; ".join(problems))]
    return [reached, Result("scopes", True, ", ".join(scope for scope, _ in scopes))]


def _forbidden(outcome: Outcome) -> bool:
    return isinstance(outcome, Fatal) and outcome.status == 403


def _allowed(scope: str, outcome: Outcome) -> bool:
    """The read must succeed; a write probe must get past the scope check to validation."""
    if scope == "profiles:read":
        return isinstance(outcome, Accepted)
    return isinstance(outcome, Permanent) and outcome.status == 400


def _describe(outcome: Outcome) -> str:
    if isinstance(outcome, Retryable):
        status = f"{outcome.status} " if outcome.status is not None else ""
        return f"unreachable or unwell: {status}{outcome.reason}"
    if isinstance(outcome, Fatal) and outcome.status == 401:
        return "the key was refused (401): wrong key or wrong KLAVIYO_AUTH_SCHEME"
    errors = getattr(outcome, "errors", ())
    code = next((e.code for e in errors if e.code), None)
    return f"unexpected answer {outcome.status}{f' {code}' if code else ''}"
