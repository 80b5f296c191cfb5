"""The Klaviyo stand-in: an aiohttp app that accepts, rejects and throttles like Klaviyo.

Its own distribution (``sandbox/pyproject.toml``), installed by ``make venv`` for development
and tests only: neither the relay's wheel nor its image carries it. Start it with
``python -m klaviyo_sandbox``.
"""

from klaviyo_sandbox.app import SandboxOptions, create_app
from klaviyo_sandbox.server import RunningSandbox, running_sandbox

__all__ = ["RunningSandbox", "SandboxOptions", "create_app", "running_sandbox"]
