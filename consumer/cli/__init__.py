"""Command line: ``python -m consumer COMMAND`` (or the ``klaviyo-relay`` script).

Each command lives in its own module and is imported lazily, so ``--help`` stays fast and a
command's dependencies load only when it runs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from consumer import __version__
from consumer.settings import Settings, SettingsError, load_settings

# command name → (module, attribute, one-line help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("consumer.cli.run", "run", "Relay Kafka events to Klaviyo until stopped."),
    "preview": ("consumer.cli.preview", "preview", "Print the Klaviyo requests for one event."),
    "produce": ("consumer.cli.produce", "produce", "Encode plain-JSON events and publish them."),
    "sandbox": ("consumer.cli.sandbox", "sandbox", "Serve the local Klaviyo stand-in."),
    "dlq": ("consumer.cli.dlq", "dlq", "Inspect and replay the dead-letter topic."),
    "check": ("consumer.cli.check", "check", "Check configuration, Kafka and Klaviyo."),
    "topics": ("consumer.cli.topics", "topics", "Create the source and dead-letter topics."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, attribute, _ = _COMMANDS[cmd_name]
        try:
            command = getattr(importlib.import_module(module), attribute)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            return _not_built(cmd_name)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in sorted(_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _not_built(name: str) -> click.Command:
    def callback() -> None:
        raise click.ClickException(f"'{name}' is not built yet")

    return click.Command(name, callback=callback, help=_COMMANDS[name][2])


@click.group(cls=_LazyGroup)
@click.version_option(__version__, prog_name="klaviyo-relay")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="RELAY_CONFIG_FILE",
    help="TOML file of settings; environment variables override it.",
)
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None) -> None:
    """Kafka → Klaviyo transactional event relay."""
    ctx.obj = {"config_file": config_file}


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    """Load and validate the settings for a command; a bad setting ends it with exit code 2."""
    root = ctx.find_root()
    config_file = root.obj.get("config_file") if root.obj else None
    try:
        return load_settings(config_file, **overrides)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def main() -> None:
    cli(prog_name="klaviyo-relay")
