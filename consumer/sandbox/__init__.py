"""The Klaviyo stand-in: an aiohttp app that accepts, rejects and throttles like Klaviyo."""

from consumer.sandbox.app import SandboxOptions, create_app
from consumer.sandbox.server import RunningSandbox, running_sandbox

__all__ = ["RunningSandbox", "SandboxOptions", "create_app", "running_sandbox"]
