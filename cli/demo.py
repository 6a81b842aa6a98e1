"""The README's main job on the embedded default: the virtual lab.

Starts the virtual phones (leaving them up), lists the fleet, then runs each later stage that is available:
the example campaign and its report. Every stage is an ordinary `autlearn` command; this only strings them together.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from autlearn.cli.campaign import EXIT_CELLS_FAILED
from autlearn.cli.main import main as autlearn


def _step(title: str, argv: list[str]) -> None:
    click.secho(f"\n$ autlearn {' '.join(argv)}", bold=True)
    click.echo(f"  ({title})")
    code = autlearn(argv)
    if code and code != EXIT_CELLS_FAILED:  # failed cells are shown by the next steps
        raise SystemExit(code)


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "paper.toml"


def main() -> int:
    _step(
        "start three virtual phones: legacy kernel, modern kernel, unrooted; a simulated Monsoon powers the"
        " unrooted one (it cannot suspend charging, so its fuel gauge is refused)",
        ["lab", "up", "--monsoon", "unrooted"],
    )
    _step("the fleet with its probed facts", ["devices"])
    _step(
        "the paper's experiment: compile the workloads (first time: minutes), then every cell on every phone;"
        " --resume continues an earlier demo",
        ["run", str(EXAMPLE), "--results", "results", "--resume"],
    )
    _step("per-cell summaries, failed and skipped cells", ["results", "show", "results/paper"])
    _step("the HTML report (offline, one file)", ["report", "results/paper", "-o", "results/paper/report.html"])
    click.secho(
        "\ndemo: done. Open results/paper/report.html; the lab stays up (`autlearn lab down` stops it).", bold=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
