"""``sandbox``: the Klaviyo stand-in's own command, when the development install provides it.

The sandbox is a separate distribution (``sandbox/``, package ``klaviyo_sandbox``) that the
relay's wheel and image leave out, and that imports nothing from the relay. This module only
finds its command at run time, so ``klaviyo-relay sandbox`` works in a development install and
says what to install anywhere else.
"""

from __future__ import annotations

import importlib

import click

_MODULE = "klaviyo_sandbox.cli"
_MISSING = (
    "the Klaviyo sandbox is not installed: it comes with the development install "
    "(`make venv`, or `pip install -e ./sandbox` in a checkout), then `python -m klaviyo_sandbox`"
)


@click.command(
    name="sandbox",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
def _not_installed() -> None:
    raise click.ClickException(_MISSING)


def _load() -> click.Command:
    try:
        module = importlib.import_module(_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in ("klaviyo_sandbox", _MODULE):
            raise
        return _not_installed
    command = module.sandbox
    assert isinstance(command, click.Command)
    return command


sandbox = _load()
