"""`autlearn report RESULTS_DIR [-o out.html] [--baseline VARIANT] [--compare OTHER_RESULTS_DIR]`."""

from __future__ import annotations

from pathlib import Path

import click

from autlearn.reports.build import SIZE_BUDGET, ReportOptions, write_report


@click.command()
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="HTML file to write [default: RESULTS_DIR/report.html]; report.json goes beside it.",
)
@click.option(
    "--baseline",
    metavar="VARIANT",
    help="Variant the others are compared with [default: unoptimized when present]. compressed and "
    "cached are always also compared with full.",
)
@click.option(
    "--baseline-governor",
    metavar="GOVERNOR",
    help="Governor energy and power are normalised to [default: the campaign's first].",
)
@click.option(
    "--compare",
    "compare_dir",
    type=click.Path(path_type=Path),
    metavar="OTHER_RESULTS_DIR",
    help="An earlier campaign: add a before (OTHER) / after (RESULTS_DIR) comparison per matching cell.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="Significance level of the Mann-Whitney test.",
)
@click.option(
    "--min-ratio",
    type=click.FloatRange(min=1.0),
    default=1.05,
    show_default=True,
    help="Smallest ratio of medians called a difference.",
)
def report(
    results_dir: Path,
    output: Path | None,
    baseline: str | None,
    baseline_governor: str | None,
    compare_dir: Path | None,
    alpha: float,
    min_ratio: float,
) -> None:
    """Write one self-contained HTML report (opens offline) of a campaign's results, and report.json."""

    w = write_report(results_dir, output, ReportOptions(baseline, baseline_governor, alpha, min_ratio), compare_dir)
    click.echo(f"report: {w.html} ({w.bytes / 1e6:.1f} MB, {w.figures} figures)")
    click.echo(f"summary: {w.json}")
    for n in w.notes:
        click.echo(f"note: {n}")
    if w.over_budget:
        click.echo(
            f"warning: the report is larger than {SIZE_BUDGET / 2**20:.0f} MiB (too big for some mail servers)",
            err=True,
        )
