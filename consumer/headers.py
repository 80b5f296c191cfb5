"""Names of the Kafka headers the relay writes on dead letters and replays.

One vocabulary shared by the writer (:mod:`consumer.pipeline.deadletter`), the relay reading a
replayed record (:mod:`consumer.pipeline.records`) and the tools reading the dead-letter topic
(:mod:`consumer.tools`), so the two sides cannot drift apart.
"""

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
# Written by `dlq replay` on the republished record.
H_REPLAY_OF = RELAY_PREFIX + "replay-of"
H_BACKFILL = RELAY_PREFIX + "backfill"
