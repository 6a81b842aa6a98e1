"""The README's main job on the embedded default: the virtual lab.

Starts the virtual phones (leaving them up), lists the fleet, then runs each later stage that is available:
the example campaign and its report. Every stage is an ordinary `autlearn` command; this only strings them together.
"""

from __future__ import annotations

import sys

import click

from profiler.cli import main as autlearn


def _step(title: str, argv: list[str]) -> None:
    click.secho(f"\n$ autlearn {' '.join(argv)}", bold=True)
    click.echo(f"  ({title})")
    code = autlearn(argv)
    if code:
        raise SystemExit(code)


def main() -> int:
    _step("start three virtual phones: legacy kernel, modern kernel, unrooted", ["lab", "up"])
    _step("the fleet with its probed facts", ["devices"])
    click.secho("\ndemo: done. The lab stays up (`autlearn lab down` stops it).", bold=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
