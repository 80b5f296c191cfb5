"""Handlers: pure functions from a decoded domain event to the Klaviyo requests the contract
(``../shared/contract/domain-events.md``) calls for. :class:`~.registry.HandlerRegistry` is
the entry point; what they raise is in :mod:`consumer.errors`."""
