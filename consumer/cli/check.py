"""``check``: what an operator runs first."""

from __future__ import annotations

import click

from consumer.cli import settings_from


@click.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the configuration and report it in one line."""
    settings = settings_from(ctx)
    click.echo(
        f"config: ok (kafka {settings.kafka_bootstrap_servers}, group {settings.kafka_group_id}, "
        f"mode {settings.send_mode.value}, metrics :{settings.metrics_port})"
    )
