"""The `autlearn` command. Subcommands are imported lazily so `autlearn --help` stays fast and side-effect free;
plugins (the virtual lab's `lab`) add theirs through the `autlearn.commands` entry point group."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from typing import cast

import click

from autlearn.profiler.errors import UserError

# name -> "module:attribute"; a command whose module is absent is not listed.
COMMANDS: dict[str, str] = {
    "devices": "autlearn.cli.devices:devices",
    "workloads": "autlearn.cli.workloads:workloads",
    "run": "autlearn.cli.campaign:run",
    "results": "autlearn.cli.campaign:results",
    "report": "autlearn.cli.report:report",
    "tables": "autlearn.cli.tables:tables",
    "prune": "autlearn.cli.prune:prune",
    "agent": "autlearn.cli.agent:agent",
}


def _commands() -> dict[str, str]:
    """Built-in commands plus those of installed plugins (entry point group `autlearn.commands`)."""

    return {**{ep.name: ep.value for ep in entry_points(group="autlearn.commands")}, **COMMANDS}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n, target in _commands().items() if importlib.util.find_spec(target.split(":")[0]))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _commands().get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        if importlib.util.find_spec(module) is None:
            return None
        return cast(click.Command, getattr(importlib.import_module(module), attr))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autlearn")
def cli() -> None:
    """Benchmark on-device training on a fleet of Android phones (or the virtual lab)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit code 1, never a traceback."""
    try:
        code = cli.main(args=argv, prog_name="autlearn", standalone_mode=False)  # a command's Exit(N): N
    except UserError as exc:
        click.echo(f"autlearn: error: {exc}", err=True)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:  # usage errors: bad option, missing argument
        click.echo(f"autlearn: error: {exc.format_message()}", err=True)
        return 1
    except click.Abort:
        click.echo("autlearn: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("autlearn: interrupted", err=True)
        return 130
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
