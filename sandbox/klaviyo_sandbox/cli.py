"""``python -m klaviyo_sandbox``: serve the local Klaviyo stand-in until SIGINT/SIGTERM.

The relay's ``klaviyo-relay sandbox`` runs this same command when the sandbox is installed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click
import orjson
from pydantic import ValidationError

from klaviyo_sandbox.app import SandboxOptions
from klaviyo_sandbox.facts import LATEST_REVISION, PUBLISHED_LIMITS, Limit, Window
from klaviyo_sandbox.faults import FaultError, parse_error_rates
from klaviyo_sandbox.oauth import OAuthOptions
from klaviyo_sandbox.server import running_sandbox


def parse_rate_limits(raw: str, window_scale: float) -> dict[str, Limit] | None:
    """``default`` | ``none`` | JSON ``{endpoint: {"burst": {...}, "steady": {...}}}`` over the
    defaults; every window length is then multiplied by ``window_scale``."""
    if raw == "none":
        return None
    limits = dict(PUBLISHED_LIMITS)
    if raw != "default":
        try:
            given = orjson.loads(raw)
            if not isinstance(given, dict):
                raise ValueError("expected a JSON object of endpoint → limits")
            unknown = set(given) - set(PUBLISHED_LIMITS)
            if unknown:
                raise ValueError(f"unknown endpoint(s) {sorted(unknown)}")
            limits.update({k: Limit.model_validate(v) for k, v in given.items()})
        except (orjson.JSONDecodeError, ValidationError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--rate-limits") from None
    return {
        name: Limit(
            burst=_scaled(limit.burst, window_scale), steady=_scaled(limit.steady, window_scale)
        )
        for name, limit in limits.items()
    }


def _scaled(window: Window, scale: float) -> Window:
    return Window(requests=window.requests, seconds=window.seconds * scale)


def parse_latency(raw: str | None) -> tuple[float, float]:
    """``MIN-MAX`` or ``N`` milliseconds."""
    if raw is None:
        return (0.0, 0.0)
    low, _, high = raw.partition("-")
    try:
        bounds = (float(low), float(high or low))
    except ValueError:
        raise click.BadParameter(
            "expected MIN-MAX milliseconds", param_hint="--latency-ms"
        ) from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise click.BadParameter("expected 0 <= MIN <= MAX", param_hint="--latency-ms")
    return bounds


def _error_rates(raw: tuple[str, ...]) -> dict[int, float]:
    pairs: dict[str, Any] = {}
    for item in raw:
        status, sep, rate = item.partition("=")
        try:
            if not sep:
                raise ValueError
            pairs[status] = float(rate)
        except ValueError:
            raise click.BadParameter(
                f"{item!r}: expected STATUS=P", param_hint="--error-rate"
            ) from None
    try:
        return parse_error_rates(pairs)
    except FaultError as exc:
        raise click.BadParameter(str(exc), param_hint="--error-rate") from None


def _oauth(
    clients: tuple[str, ...], refresh_tokens: tuple[str, ...], lifetime: int, rotate: bool
) -> OAuthOptions | None:
    if not clients:
        return None
    pairs = {}
    for item in clients:
        client_id, sep, secret = item.partition(":")
        if not sep or not client_id or not secret:
            raise click.BadParameter(f"{item!r}: expected ID:SECRET", param_hint="--oauth-client")
        pairs[client_id] = secret
    return OAuthOptions(
        clients=pairs, refresh_tokens=refresh_tokens, token_lifetime=lifetime, rotate=rotate
    )


@click.command(name="sandbox")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8089, show_default=True)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    default=("pk_sandbox",),
    show_default=True,
    help="Accepted key (as Klaviyo-API-Key or Bearer); repeatable.",
)
@click.option("--revision", default=LATEST_REVISION, show_default=True, help="Latest revision.")
@click.option(
    "--rate-limits",
    default="default",
    show_default=True,
    help="default (Klaviyo's published limits), none, or JSON per endpoint over the defaults.",
)
@click.option(
    "--window-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Multiply every window length (0.01 for tests).",
)
@click.option("--error-rate", "error_rates", multiple=True, help="STATUS=P, e.g. 503=0.2.")
@click.option("--latency-ms", default=None, help="MIN-MAX (uniform) added to every answer.")
@click.option(
    "--timeout-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share of requests never answered.",
)
@click.option("--fail-auth", is_flag=True, help="Answer 401 to everything.")
@click.option(
    "--challenge-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share of requests answered with Cloudflare's HTML 403 bot challenge.",
)
@click.option(
    "--partial-failure-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share of accepted Create Events answered with X-Klaviyo-Partial-Failure.",
)
@click.option(
    "--oauth-client",
    "oauth_clients",
    multiple=True,
    help="ID:SECRET of an OAuth app: serves POST /oauth/token and accepts the tokens it issues;"
    " repeatable.",
)
@click.option(
    "--oauth-refresh-token",
    "oauth_refresh_tokens",
    multiple=True,
    default=("rt_sandbox",),
    show_default=True,
    help="Refresh token the token endpoint accepts at start; repeatable.",
)
@click.option(
    "--oauth-token-lifetime",
    type=click.IntRange(min=1),
    default=3600,
    show_default=True,
    help="Seconds an access token works (expires_in).",
)
@click.option(
    "--oauth-rotate/--no-oauth-rotate",
    default=False,
    show_default=True,
    help="Every refresh returns a new refresh token and invalidates the old one.",
)
@click.option("--seed", type=int, default=None, help="Seed for faults and profile ids.")
@click.option(
    "--keep-events/--count-only",
    default=True,
    show_default=True,
    help="Keep accepted events for /_sandbox/events, or only count them (long benchmarks).",
)
@click.option("--access-log/--no-access-log", default=False, show_default=True)
def sandbox(
    *,
    host: str,
    port: int,
    api_keys: tuple[str, ...],
    revision: str,
    rate_limits: str,
    window_scale: float,
    error_rates: tuple[str, ...],
    latency_ms: str | None,
    timeout_rate: float,
    fail_auth: bool,
    challenge_rate: float,
    partial_failure_rate: float,
    oauth_clients: tuple[str, ...],
    oauth_refresh_tokens: tuple[str, ...],
    oauth_token_lifetime: int,
    oauth_rotate: bool,
    seed: int | None,
    keep_events: bool,
    access_log: bool,
) -> None:
    """Serve a local Klaviyo stand-in (inspect it under /_sandbox/)."""
    options = SandboxOptions(
        api_keys=api_keys,
        revision=revision,
        rate_limits=parse_rate_limits(rate_limits, window_scale),
        error_rates=_error_rates(error_rates),
        latency_ms=parse_latency(latency_ms),
        timeout_rate=timeout_rate,
        seed=seed,
        fail_auth=fail_auth,
        challenge_rate=challenge_rate,
        partial_failure_rate=partial_failure_rate,
        keep_events=keep_events,
        oauth=_oauth(oauth_clients, oauth_refresh_tokens, oauth_token_lifetime, oauth_rotate),
    )
    if access_log:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    asyncio.run(_serve(options, host, port, access_log))


async def _serve(options: SandboxOptions, host: str, port: int, access_log: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_sandbox(options, port, host, access_log=access_log) as sb:
        click.echo(f"Klaviyo sandbox listening on {sb.base_url}")
        click.echo(f"accepted API key(s): {', '.join(options.api_keys)}")
        click.echo("point the relay at it with:")
        click.echo(f"  export KLAVIYO_BASE_URL={sb.base_url}")
        click.echo(f"  export KLAVIYO_API_KEY={options.api_keys[0]}")
        if options.oauth is not None:
            click.echo(f"OAuth token endpoint: {sb.base_url}/oauth/token")
        click.echo(f"what it received: {sb.base_url}/ (inbox page; JSON at /_sandbox/events)")
        await stop.wait()
