"""Kafka → Klaviyo transactional event relay.

Avro domain events are read from Kafka, turned into Klaviyo API requests by pure handlers,
sent under Klaviyo's rate limits, and their offsets committed only once Klaviyo has accepted
them (or they were parked on the dead-letter topic).
"""

__version__ = "0.1.0"
# The relay is an application, not a library: its interface is the ``klaviyo-relay`` command,
# its settings and its topics. The package promises nothing to importers but its version, and
# tests/unit/test_public_surface.py keeps it that way; modules import what they need from the
# submodule that defines it.
__all__ = ["__version__"]
