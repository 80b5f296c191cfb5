"""What ``run`` refuses to start without, checked in one place so ``check`` reports the same.

Every problem is one line naming the setting; nothing here touches the network.
"""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException

from consumer.accounts.config import accounts_from, has_credentials
from consumer.cli.kafka import QUIET_KAFKA_LOG
from consumer.klaviyo.revision import InvalidRevision, revision_date
from consumer.settings import Settings, SettingsError


def preflight(settings: Settings, *, key: bool = True) -> list[str]:
    """The problems that would stop ``run`` after its settings loaded, one line each.

    ``key=False`` leaves the API key out (``check`` reports it on its klaviyo line)."""
    from consumer.pipeline.source import consumer_config  # noqa: PLC0415 (loads the pipeline)
    from consumer.schemas import SchemaError, SchemaStore  # noqa: PLC0415 (parses schemas)

    problems = []
    try:
        accounts_from(settings)  # named accounts: each one's settings and credentials
    except SettingsError as exc:
        problems.append(str(exc))
    if key and not settings.klaviyo_accounts and not has_credentials(settings):
        problems.append("KLAVIYO_API_KEY is not set")
    try:
        source_topics(settings)
    except SettingsError as exc:
        problems.append(str(exc))
    try:
        SchemaStore.from_settings(settings)
    except SchemaError as exc:
        problems.append(f"SCHEMAS_DIR: {exc}")
    try:
        revision_date(settings.klaviyo_revision)
    except InvalidRevision as exc:
        problems.append(str(exc))
    problem = librdkafka_problem(consumer_config(settings))
    if problem is not None:
        problems.append(problem)
    return problems


def source_topics(settings: Settings) -> list[str]:
    from consumer.handlers.registry import HandlerRegistry  # noqa: PLC0415 (loads handlers)

    return HandlerRegistry.from_settings(settings).topics()


def librdkafka_problem(config: dict[str, str]) -> str | None:
    """librdkafka checks property names and values when a client is made (no connection yet)."""
    try:
        client = Consumer({**config, "group.id": "klaviyo-relay-preflight"}, logger=QUIET_KAFKA_LOG)
    except KafkaException as exc:
        return f"KAFKA_EXTRA_CONFIG (or a KAFKA_* setting): {exc.args[0].str()}"
    client.close()
    return None
