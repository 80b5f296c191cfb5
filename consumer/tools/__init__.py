"""Operator tools built on the relay's parts: reading and replaying the dead-letter topic."""
