"""``run``'s options: --max-duration belongs to --until-caught-up runs."""

from __future__ import annotations

from click.testing import CliRunner

from consumer.cli import cli


def test_max_duration_without_until_caught_up_is_refused() -> None:
    result = CliRunner().invoke(cli, ["run", "--max-duration", "60"])
    assert result.exit_code == 2
    assert "--max-duration applies to --until-caught-up runs only" in result.output


def test_max_duration_must_be_positive() -> None:
    result = CliRunner().invoke(cli, ["run", "--until-caught-up", "--max-duration", "0"])
    assert result.exit_code == 2
    assert "--max-duration" in result.output
