"""Names of the Kafka headers the relay writes on dead letters and replays.

One vocabulary shared by the writer (:mod:`consumer.pipeline.deadletter`), the relay reading a
replayed record (:mod:`consumer.pipeline.records`) and the tools reading the dead-letter topic
(:mod:`consumer.tools`), so the two sides cannot drift apart.
"""

# A record's headers as the relay keeps them: (name, value) in order, names may repeat.
Headers = tuple[tuple[str, bytes], ...]

# Kafka Connect's error headers, so Connect tooling reads our dead letters too.
CONNECT_PREFIX = "__connect.errors."
H_TOPIC = CONNECT_PREFIX + "topic"
H_PARTITION = CONNECT_PREFIX + "partition"
H_OFFSET = CONNECT_PREFIX + "offset"
H_STAGE = CONNECT_PREFIX + "stage"
H_CLASS = CONNECT_PREFIX + "class.name"
H_MESSAGE = CONNECT_PREFIX + "exception.message"

# The relay's own headers.
RELAY_PREFIX = "klaviyo-relay."
H_REASON = RELAY_PREFIX + "reason"
H_STATUS = RELAY_PREFIX + "klaviyo.status"
H_CODE = RELAY_PREFIX + "klaviyo.code"
H_POINTER = RELAY_PREFIX + "klaviyo.pointer"
H_ATTEMPTS = RELAY_PREFIX + "attempts"
H_FIRST_FAILURE = RELAY_PREFIX + "first-failure"
H_ENDPOINT = RELAY_PREFIX + "endpoint"
# The source record's timestamp (RFC 3339): the dead letter's own is the time it was parked, so
# the topic's retention counts from parking.
H_ORIGINAL_TIMESTAMP = RELAY_PREFIX + "original-timestamp"
# A too_large marker: the record could not be parked as it was (see pipeline.deadletter).
H_ORIGINAL_REASON = RELAY_PREFIX + "original-reason"  # why it failed in the first place
H_ORIGINAL_SIZE = RELAY_PREFIX + "original-size"  # bytes of the original value
H_VALUE_SHA256 = RELAY_PREFIX + "value-sha256"  # of the original value, hex
H_VALUE_TRUNCATED = RELAY_PREFIX + "value-truncated"  # "prefix" | "dropped"
H_OMITTED = RELAY_PREFIX + "omitted"  # other parts left out: "headers", "key" (comma-separated)
# Written by `dlq replay` on the republished record.
H_REPLAY_OF = RELAY_PREFIX + "replay-of"
H_BACKFILL = RELAY_PREFIX + "backfill"
