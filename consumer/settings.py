"""The one typed settings object.

Every setting is read from an environment variable of the same name in upper case
(``KAFKA_BOOTSTRAP_SERVERS``, ``SEND_MODE``, ...) and, optionally, from a TOML file given with
``--config``; the environment wins over the file. Validation happens once at start-up and a
bad value is reported by its environment name (see :func:`load_settings`).
"""

from __future__ import annotations

import difflib
import logging
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as SourceError

from consumer.priorities import DEFAULT_TOPIC_PRIORITIES, PriorityClass
from consumer.topics import CONTRACT_TOPICS

DEFAULT_REVISION = "2026-07-15"
_URL = re.compile(r"(https?|mock)://[^/\s]+(/\S*)?")
ACCOUNT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")


class SendMode(StrEnum):
    REALTIME = "realtime"
    BATCH = "batch"
    AUTO = "auto"  # Create Event while it has room and the event is fresh, else bulk jobs


class AuthScheme(StrEnum):
    """How the key is sent: private keys as ``Klaviyo-API-Key``, OAuth tokens as ``Bearer``."""

    API_KEY = "api-key"
    BEARER = "bearer"


class WindowLimit(BaseModel):
    """One fixed window: at most ``requests`` per ``seconds``."""

    requests: PositiveInt
    seconds: PositiveFloat


class EndpointLimit(BaseModel):
    """Klaviyo's two fixed windows for one endpoint: a short burst and a longer steady one."""

    burst: WindowLimit
    steady: WindowLimit


def _limit(burst: int, steady: int) -> EndpointLimit:
    return EndpointLimit(
        burst=WindowLimit(requests=burst, seconds=1.0),
        steady=WindowLimit(requests=steady, seconds=60.0),
    )


# Published defaults: the spec's ``x-klaviyo-ratelimit`` per operation (revision 2026-07-15).
DEFAULT_RATE_LIMITS: dict[str, EndpointLimit] = {
    "create_event": _limit(350, 3500),
    "bulk_create_events": _limit(10, 150),
    "update_profile": _limit(75, 750),
    "create_or_update_profile": _limit(75, 750),
    "get_profiles": _limit(75, 750),
}


class _TomlFileSource(PydanticBaseSettingsSource):
    """Settings from the ``--config`` TOML file: keys are the setting names, either case."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        if path is not None:
            with path.open("rb") as fh:
                self._values = {k.lower(): v for k, v in tomllib.load(fh).items()}
            _refuse_unknown_keys(path, self._values, settings_cls)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def _refuse_unknown_keys(
    path: Path, values: dict[str, Any], settings_cls: type[BaseSettings]
) -> None:
    """A misspelt key or a table of our own invention would otherwise be ignored silently."""
    known = [name for name in settings_cls.model_fields if name != "config_file"]
    problems = []
    for key in sorted(set(values) - set(known)):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"unknown key {key!r}{hint}")
    if problems:
        raise SettingsError(f"config file {path}: " + "; ".join(problems))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        case_sensitive=False,
        extra="ignore",
        env_nested_delimiter="__",
    )

    # --- Kafka ---
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_group_id: str = "klaviyo-relay"
    kafka_security_protocol: str | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None
    kafka_ssl_certificate_location: str | None = None
    kafka_ssl_key_location: str | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_extra_config: dict[str, str] = Field(
        default_factory=dict,
        description="Any other librdkafka property, as a JSON object (passed through as is).",
    )
    kafka_secret_extra_config: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Secret librdkafka properties (JSON object), merged over KAFKA_EXTRA_CONFIG.",
    )
    topics: list[str] = Field(
        default_factory=list,
        description="Topics to consume; empty means every topic of the handler registry.",
    )
    topic_handlers: dict[str, str] = Field(
        default_factory=dict,
        description="Override topic → handler (handler named by its default topic or record).",
    )
    dlq_topic: str = "klaviyo-relay.dlq"

    # --- Schemas ---
    schema_registry_url: str | None = None
    schema_registry_basic_auth_user_info: SecretStr | None = Field(
        default=None, description="Registry HTTP basic auth as user:password."
    )
    schema_registry_bearer_token: SecretStr | None = Field(
        default=None, description="Registry bearer token (exclusive with basic auth)."
    )
    schema_registry_logical_cluster: str = Field(
        default="", description="Confluent Cloud logical cluster id sent with the bearer token."
    )
    schema_registry_timeout_seconds: PositiveFloat = 5.0
    schemas_dir: Path | None = Field(
        default=None, description="Folder of .avsc files; the packaged schemas when unset."
    )

    # --- Klaviyo ---
    klaviyo_api_key: SecretStr | None = None
    klaviyo_auth_scheme: AuthScheme = AuthScheme.API_KEY
    klaviyo_base_url: str = "https://a.klaviyo.com"
    klaviyo_revision: str = DEFAULT_REVISION
    klaviyo_timeout_seconds: PositiveFloat = 30.0
    klaviyo_gzip: bool = False
    klaviyo_max_connections: PositiveInt = 100
    klaviyo_oauth_client_id: str | None = Field(
        default=None, description="OAuth app client id; set to send with refreshed OAuth tokens."
    )
    klaviyo_oauth_client_secret: SecretStr | None = None
    klaviyo_oauth_refresh_token: SecretStr | None = Field(
        default=None,
        validate_default=True,
        description="The installation's refresh token (the first; rotated ones are"
        " kept in the token store).",
    )
    klaviyo_oauth_token_url: str = "https://a.klaviyo.com/oauth/token"
    klaviyo_oauth_token_store: Path | None = Field(
        default=None,
        description="File keeping the newest rotated refresh token (mode 0600, written"
        " atomically); for one process or a volume only it mounts.",
    )
    klaviyo_oauth_token_secret: str | None = Field(
        default=None,
        description="Kubernetes Secret (same namespace) keeping the newest rotated refresh token"
        " for every replica; patched through the in-cluster API.",
    )
    klaviyo_accounts: list[str] = Field(
        default_factory=list,
        description="Named Klaviyo accounts served by this relay (each from"
        " KLAVIYO_ACCOUNT_<NAME>_<FIELD>); empty: one account from the KLAVIYO_* settings.",
    )
    klaviyo_default_account: str | None = Field(
        default=None,
        description="The account of events with neither the account header nor a topic in"
        " KLAVIYO_ACCOUNT_TOPICS (default: `default` when top-level credentials are set).",
    )
    klaviyo_account_topics: dict[str, str] = Field(
        default_factory=dict, description="Topic → account name, for events without the header."
    )
    klaviyo_account_header: str = Field(
        default="klaviyo-account", description="Kafka header naming an event's account."
    )
    rate_limits: dict[str, EndpointLimit] = Field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS),
        description="Per-endpoint burst/steady windows; unspecified endpoints keep the defaults.",
    )
    rate_limit_share: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="This replica's share of the account's quota; unset: its assigned"
        " partitions' share of the group's (see docs/operations.md).",
    )
    retry_max_attempts: PositiveInt = 8
    retry_max_elapsed_seconds: PositiveFloat = 120.0
    retry_base_seconds: PositiveFloat = 0.5
    retry_cap_seconds: PositiveFloat = 60.0

    # --- Relay ---
    send_mode: SendMode = SendMode.AUTO
    max_in_flight: PositiveInt = 2000
    resume_below: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="Resume paused partitions below this share."
    )
    batch_max_events: int = Field(default=1000, ge=1, le=1000)
    batch_linger_seconds: PositiveFloat = 0.5
    auto_realtime_max_wait_seconds: PositiveFloat = Field(
        default=2.0,
        description="Auto mode: an event taken longer ago than this goes into a bulk job.",
    )
    auto_realtime_fallover_seconds: PositiveFloat = Field(
        default=5.0,
        description="Auto mode: a Create Event sent realtime and not accepted within this "
        "(Klaviyo fails or throttles and it is being retried) goes into a bulk job instead; "
        "for as long again, fresh events go to bulk jobs too.",
    )
    drain_timeout_seconds: PositiveFloat = 25.0
    commit_interval_seconds: PositiveFloat = 1.0
    default_phone_region: str = "US"
    replay_backfill_after_seconds: PositiveFloat = 3600.0
    max_pending_per_partition: PositiveInt | None = Field(
        default=None,
        description="Offsets a partition may hold behind an unfinished event before it pauses "
        "(empty: 5 × max_in_flight).",
    )
    account_max_in_flight: PositiveInt | None = Field(
        default=None,
        description="With KLAVIYO_ACCOUNTS: events one account may hold in flight before the "
        "partitions its events came from pause (empty: max_in_flight ÷ (accounts + 1), at "
        "least 100).",
    )
    topic_priorities: dict[str, PriorityClass] = Field(
        default_factory=lambda: dict(DEFAULT_TOPIC_PRIORITIES),
        description="Topic → priority class (urgent, high, normal, low, lowest) for a short "
        "quota; merged over the default, unlisted topics are normal.",
    )

    # --- Operations ---
    metrics_port: int = Field(default=9400, ge=0, le=65535)
    log_level: str = "INFO"
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")

    # Set by load_settings from --config; not a setting of its own.
    config_file: Path | None = Field(default=None, exclude=True)

    @field_validator("kafka_bootstrap_servers", "kafka_group_id", "dlq_topic")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("schema_registry_basic_auth_user_info")
    @classmethod
    def _user_and_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and ":" not in value.get_secret_value():
            raise ValueError("must be user:password")
        return value

    @field_validator("schema_registry_bearer_token")
    @classmethod
    def _one_registry_credential(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is not None and info.data.get("schema_registry_basic_auth_user_info"):
            raise ValueError("set this or SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO, not both")
        return value

    @field_validator("klaviyo_accounts")
    @classmethod
    def _account_names(cls, value: list[str]) -> list[str]:
        # Names become metric label values and environment variable names: kept short and plain.
        bad = [name for name in value if not ACCOUNT_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"bad account name(s) {bad}: expected {ACCOUNT_NAME.pattern}")
        if len(set(value)) != len(value):
            raise ValueError("an account is named twice")
        return value

    @field_validator("rate_limits")
    @classmethod
    def _merge_limits(cls, value: dict[str, EndpointLimit]) -> dict[str, EndpointLimit]:
        unknown = set(value) - set(DEFAULT_RATE_LIMITS)
        if unknown:
            raise ValueError(f"unknown endpoint(s) {sorted(unknown)}")
        return {**DEFAULT_RATE_LIMITS, **value}

    @field_validator("topic_priorities")
    @classmethod
    def _merge_priorities(
        cls, value: dict[str, PriorityClass], info: ValidationInfo
    ) -> dict[str, PriorityClass]:
        # A misspelt topic would silently keep its default class.
        known = {
            *CONTRACT_TOPICS,
            *info.data.get("topics", ()),
            *info.data.get("topic_handlers", ()),
        }
        unknown = set(value) - known
        if unknown:
            raise ValueError(
                f"unknown topic(s) {sorted(unknown)} "
                "(neither a contract topic nor in TOPICS or TOPIC_HANDLERS)"
            )
        return {**DEFAULT_TOPIC_PRIORITIES, **value}

    @field_validator("klaviyo_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # Without a scheme aiohttp fails on the first request, long after start-up.
        if not _URL.fullmatch(value) or value.startswith("mock://"):
            raise ValueError("must be an http:// or https:// URL, e.g. https://a.klaviyo.com")
        return value

    @field_validator("klaviyo_oauth_token_url")
    @classmethod
    def _token_url(cls, value: str) -> str:
        if not _URL.fullmatch(value) or value.startswith("mock://"):
            raise ValueError(
                "must be an http:// or https:// URL, e.g. https://a.klaviyo.com/oauth/token"
            )
        return value

    @field_validator("klaviyo_oauth_refresh_token")
    @classmethod
    def _oauth_complete(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # Half an OAuth set-up would otherwise fail only at the first token request. (A field
        # validator, not a model one: its error names a secret field, so no value is shown.)
        parts = {
            "KLAVIYO_OAUTH_CLIENT_ID": info.data.get("klaviyo_oauth_client_id"),
            "KLAVIYO_OAUTH_CLIENT_SECRET": info.data.get("klaviyo_oauth_client_secret"),
            "KLAVIYO_OAUTH_REFRESH_TOKEN": value,
        }
        missing = [name for name, given in parts.items() if not given]
        if 0 < len(missing) < len(parts):
            raise ValueError(f"OAuth needs {', '.join(missing)} as well")
        return value

    @property
    def oauth(self) -> bool:
        """Whether Klaviyo is called with refreshed OAuth tokens instead of KLAVIYO_API_KEY."""
        return bool(self.klaviyo_oauth_client_id)

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_urls(cls, value: str | None) -> str | None:
        # Empty means unset; several URLs are comma-separated; mock:// is the client's in-memory
        # registry (tests).
        if value and not all(_URL.fullmatch(url.strip()) for url in value.split(",")):
            raise ValueError("must be http:// or https:// URL(s), e.g. http://registry:8081")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in logging.getLevelNamesMapping():
            raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = init_settings().get("config_file")
        return (
            init_settings,
            env_settings,
            _TomlFileSource(settings_cls, Path(config_file) if config_file else None),
        )

    @property
    def pending_bound(self) -> int:
        """MAX_PENDING_PER_PARTITION, or its default derived from MAX_IN_FLIGHT."""
        return self.max_pending_per_partition or 5 * self.max_in_flight

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka properties shared by the consumer, producer and admin client."""
        config: dict[str, str] = {"bootstrap.servers": self.kafka_bootstrap_servers}
        optional = {
            "security.protocol": self.kafka_security_protocol,
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "ssl.ca.location": self.kafka_ssl_ca_location,
            "ssl.certificate.location": self.kafka_ssl_certificate_location,
            "ssl.key.location": self.kafka_ssl_key_location,
        }
        config.update({k: v for k, v in optional.items() if v})
        if self.kafka_sasl_password is not None:
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_key_password is not None:
            config["ssl.key.password"] = self.kafka_ssl_key_password.get_secret_value()
        config.update(self.kafka_extra_config)
        config.update((k, v.get_secret_value()) for k, v in self.kafka_secret_extra_config.items())
        return config


_SECRET_NAME = re.compile(r"KEY|PASSWORD|SECRET|TOKEN|USER_INFO")


class SettingsError(Exception):
    """A setting is missing or invalid; the message names it by its environment variable."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate the settings, turning pydantic's report into one line per bad setting."""
    try:
        return Settings(config_file=config_file, **overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = "__".join(str(part) for part in error["loc"]).upper() or "SETTINGS"
            shown = "" if _SECRET_NAME.search(name) else f" (got {error.get('input')!r})"
            problems.append(f"{name}: {error['msg']}{shown}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
    except SourceError as exc:
        # pydantic-settings could not parse a complex value (a list or an object) as JSON.
        field = re.search(r'field "(\w+)"', str(exc))
        name = field.group(1).upper() if field else "SETTINGS"
        raise SettingsError(f"invalid configuration: {name}: not valid JSON") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read config file {config_file}: {exc}") from None
