"""Kept only for consumer/pipeline/relay.py, which imports EventRejected from here and is being
rewritten on another branch: new code imports :mod:`consumer.errors`. Delete this module once
relay.py does too."""

from consumer.errors import EventRejected

__all__ = ["EventRejected"]
