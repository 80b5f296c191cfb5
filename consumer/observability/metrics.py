"""Every Prometheus metric of the relay, defined once.

Incremented where the fact happens; nothing else in the code base knows Prometheus.
Labels are bounded: topic, Klaviyo metric name, endpoint, outcome, status class, stage,
reason code. Never an email, id, key or offset.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from consumer import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

BUILD_INFO = Info("klaviyo_relay_build", "Version of the relay.", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})

EVENTS_CONSUMED = Counter(
    "klaviyo_relay_events_consumed_total",
    "Kafka records taken from the source topics.",
    ["topic"],
    registry=REGISTRY,
)
EVENTS_DELIVERED = Counter(
    "klaviyo_relay_events_delivered_total",
    "Klaviyo events accepted (2xx), by Klaviyo metric name.",
    ["topic", "metric", "account"],
    registry=REGISTRY,
)
EVENTS_DEAD_LETTERED = Counter(
    "klaviyo_relay_events_dead_lettered_total",
    "Records written to the dead-letter topic, by stage and reason code.",
    ["topic", "stage", "reason"],
    registry=REGISTRY,
)
DEAD_LETTER_WRITE_FAILURES = Counter(
    "klaviyo_relay_dead_letter_write_failures_total",
    "Dead-letter writes the producer or broker refused (retried until acknowledged), by"
    " librdkafka error name (unknown_topic_or_part, topic_authorization_failed, msg_timed_out...).",
    ["error"],
    registry=REGISTRY,
)
PLAN_WARNINGS = Counter(
    "klaviyo_relay_plan_warnings_total",
    "Data dropped while building requests (e.g. an unparseable phone number).",
    ["topic", "code"],
    registry=REGISTRY,
)
KLAVIYO_REQUESTS = Counter(
    "klaviyo_relay_klaviyo_requests_total",
    "HTTP requests to Klaviyo by endpoint, outcome and status class (2xx, 4xx, 5xx, error).",
    ["endpoint", "outcome", "status_class", "account"],
    registry=REGISTRY,
)
KLAVIYO_REQUEST_DURATION = Histogram(
    "klaviyo_relay_klaviyo_request_duration_seconds",
    "Latency of one HTTP request to Klaviyo.",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
KLAVIYO_RETRIES = Counter(
    "klaviyo_relay_klaviyo_retries_total",
    "Requests sent again after a retryable outcome.",
    ["endpoint", "reason"],
    registry=REGISTRY,
)
KLAVIYO_THROTTLED = Counter(
    "klaviyo_relay_klaviyo_throttled_total",
    "429 Too Many Requests answers.",
    ["endpoint", "account"],
    registry=REGISTRY,
)
RATE_LIMIT_WAIT = Histogram(
    "klaviyo_relay_rate_limit_wait_seconds",
    "Time a request waited for a rate-limit token.",
    ["endpoint"],
    buckets=(0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
RATE_LIMIT_REMAINING = Gauge(
    "klaviyo_relay_rate_limit_remaining",
    "Requests left in the current steady window, as this relay sees it.",
    ["endpoint", "account"],
    registry=REGISTRY,
)
EVENTS_IN_FLIGHT = Gauge(
    "klaviyo_relay_events_in_flight",
    "Events taken from Kafka and not yet finished (accepted or dead-lettered).",
    registry=REGISTRY,
)
ACCOUNT_EVENTS_IN_FLIGHT = Gauge(
    "klaviyo_relay_account_events_in_flight",
    "With several accounts: the account's events taken from Kafka and not yet finished (at"
    " ACCOUNT_MAX_IN_FLIGHT the partitions they came from pause).",
    ["account"],
    registry=REGISTRY,
)
PARTITIONS_PAUSED = Gauge(
    "klaviyo_relay_partitions_paused",
    "Assigned partitions paused for back-pressure.",
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "klaviyo_relay_consumer_lag_messages",
    "Messages between the committed offset and the end of the partition (librdkafka stats).",
    ["topic", "partition"],
    registry=REGISTRY,
)
COMMITTED_OFFSET = Gauge(
    "klaviyo_relay_committed_offset",
    "Last committed offset per partition (librdkafka stats).",
    ["topic", "partition"],
    registry=REGISTRY,
)
END_TO_END_DELAY = Histogram(
    "klaviyo_relay_end_to_end_delay_seconds",
    "From the event's occurred_at to Klaviyo accepting it.",
    ["topic"],
    buckets=_DELAY_BUCKETS,
    registry=REGISTRY,
)
COMMIT_DURATION = Histogram(
    "klaviyo_relay_commit_duration_seconds",
    "Latency of an offset commit to the group coordinator.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RELAY_READY = Gauge(
    "klaviyo_relay_ready",
    "1 when a working group member: joined, not halted, not stopping (same as /readyz).",
    registry=REGISTRY,
)
RELAY_HALTED = Gauge(
    "klaviyo_relay_halted",
    "1 after a fatal Klaviyo answer (401/403) for the account: alone, dispatch stopped and"
    " nothing further committed; one of several, its events are parked (account_halted).",
    ["account"],
    registry=REGISTRY,
)

KLAVIYO_EDGE_ANSWERS = Counter(
    "klaviyo_relay_klaviyo_edge_answers_total",
    "401/403 answers that are not Klaviyo's JSON:API auth errors (retried), by kind: "
    "challenge (Cloudflare cf-mitigated), html, other.",
    ["status", "kind"],
    registry=REGISTRY,
)
KLAVIYO_PARTIAL_FAILURES = Counter(
    "klaviyo_relay_klaviyo_partial_failures_total",
    "Accepted answers carrying X-Klaviyo-Partial-Failure (a field dropped), by endpoint and field.",
    ["endpoint", "field"],
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge(
    "klaviyo_relay_assigned_partitions",
    "Partitions assigned to this member (0 for an idle member of the group).",
    registry=REGISTRY,
)
OLDEST_UNFINISHED_AGE = Gauge(
    "klaviyo_relay_oldest_unfinished_event_age_seconds",
    "Seconds since the oldest unfinished event of the partition was taken from Kafka "
    "(0 when none): an event holding the partition's watermark.",
    ["topic", "partition"],
    registry=REGISTRY,
)
PARTITIONS_PENDING_PAUSED = Gauge(
    "klaviyo_relay_partitions_paused_pending",
    "Partitions paused because too many offsets wait behind an unfinished event.",
    registry=REGISTRY,
)
BULK_DUPLICATES = Counter(
    "klaviyo_relay_bulk_duplicates_total",
    "Events not sent: the same event (metric, unique_id, profile) was already in the bulk job.",
    ["topic"],
    registry=REGISTRY,
)
KLAVIYO_REVISION_AGE = Gauge(
    "klaviyo_relay_klaviyo_revision_age_days",
    "Age in days of the pinned Klaviyo API revision (KLAVIYO_REVISION): deprecated after 365,"
    " retired after 730.",
    registry=REGISTRY,
)
QUOTA_SHARE = Gauge(
    "klaviyo_relay_quota_share",
    "This replica's share of the account's Klaviyo quota: RATE_LIMIT_SHARE when set, else its"
    " assigned partitions' share of all subscribed partitions (moves at every rebalance).",
    ["account"],
    registry=REGISTRY,
)
QUOTA_SATURATION = Gauge(
    "klaviyo_relay_quota_saturation",
    "Fraction of this replica's steady rate-limit window in use (in flight or answered within"
    " the window), as of its last request; near 1 the quota, not the pod, limits throughput.",
    ["endpoint", "account"],
    registry=REGISTRY,
)

AUTO_ROUTES = Counter(
    "klaviyo_relay_auto_route_total",
    "Auto mode: Create Events by the path chosen (realtime, bulk) and why (room, quota,"
    " stale, late, order, failing, fallover).",
    ["path", "reason"],
    registry=REGISTRY,
)
RATE_LIMIT_WAIT_BY_PRIORITY = Histogram(
    "klaviyo_relay_rate_limit_wait_by_priority_seconds",
    "Time a request waited for a rate-limit place, by its event's priority class.",
    ["endpoint", "priority"],
    buckets=(0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
PARTITIONS_DEFERRED = Gauge(
    "klaviyo_relay_partitions_deferred",
    "Partitions of less urgent priority classes paused while the in-flight window is crowded.",
    registry=REGISTRY,
)

REPLAY_SKIPPED = Counter(
    "klaviyo_relay_replay_skipped_total",
    "Records read again after a crash or rebalance and not sent: the group's last commit maps "
    "them as finished by an earlier owner (quota saved).",
    ["topic"],
    registry=REGISTRY,
)
REPLAY_RESENT = Counter(
    "klaviyo_relay_replay_resent_total",
    "Records read again whose event an earlier owner had started but not finished by its last "
    "commit: sent again, so some of their requests may reach Klaviyo twice (deduplicated by "
    "unique_id): the resends the commit's map cannot rule out.",
    ["topic"],
    registry=REGISTRY,
)

OAUTH_REFRESHES = Counter(
    "klaviyo_relay_oauth_refreshes_total",
    "OAuth access-token refreshes by result: ok, retried (a transient token-endpoint failure,"
    " tried again), unavailable (the retry budget spent), invalid_grant (grant revoked: halted),"
    " refused (client refused: halted).",
    ["result", "account"],
    registry=REGISTRY,
)
OAUTH_TOKEN_EXPIRY = Gauge(
    "klaviyo_relay_oauth_token_expiry_timestamp_seconds",
    "Unix time at which the current OAuth access token expires (0 without OAuth).",
    ["account"],
    registry=REGISTRY,
)

BULK_REQUEST_EVENTS = Histogram(
    "klaviyo_relay_bulk_request_events",
    "Events per Bulk Create Events request sent (auto mode sizes them to its backlog; a kill -9"
    " resends those of the requests out).",
    buckets=(1, 10, 50, 100, 200, 500, 1000),
    registry=REGISTRY,
)


def status_class(status: int | None) -> str:
    """``2xx``/``4xx``/``5xx`` for an HTTP status, ``error`` when there was no answer."""
    return f"{status // 100}xx" if status is not None else "error"
