"""Kafka → Klaviyo transactional event relay.

Avro domain events are read from Kafka, turned into Klaviyo API requests by pure handlers,
sent under Klaviyo's rate limits, and their offsets committed only once Klaviyo has accepted
them (or they were parked on the dead-letter topic).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
