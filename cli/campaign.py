"""`autlearn run CAMPAIGN.toml` and `autlearn results show|compare`."""

from __future__ import annotations

import json
import math
import sys
import threading
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autlearn.cli.options import measure_options
from autlearn.engine.campaign import run as run_campaign
from autlearn.engine.campaign_config import load_campaign
from autlearn.engine.gate import KEY, KINDS, ONLY_BASE, ONLY_CANDIDATE, REGRESSION, GateResult, gate
from autlearn.engine.store import (
    bad_cell_lines,
    check_poolable,
    energy_reason,
    load_results,
    load_status,
    load_summaries,
    one_line,
    sorted_summaries,
)
from autlearn.pipelines.artifact_cache import artifact_provider
from autlearn.pipelines.tune import tune_for_campaign
from autlearn.profiler.errors import UserError
from autlearn.profiler.stats import compare

if TYPE_CHECKING:
    import pandas as pd
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    from autlearn.engine.settings import MeasureSettings
    from autlearn.engine.worker import Progress

EXIT_CELLS_FAILED = 3  # `run` finished, and some cells failed (1: bad input or hardware; 130: interrupted)


def _progress_table(progress: Progress) -> Table:

    t = Table(title="campaign progress", title_justify="left")
    for col in ("device", "cells", "now"):
        t.add_column(col)
    with progress.lock:
        for serial, total in progress.total.items():
            t.add_row(Text(serial), f"{progress.done.get(serial, 0)}/{total}", Text(progress.state.get(serial, "")))
    return t


class LiveProgress:
    """A live table of the running campaign's progress on stderr (one table per campaign; the finished ones stay
    on screen). `on_progress` and `log` are the callbacks of autlearn.engine.campaign.run."""

    def __init__(self) -> None:

        self.console = Console(stderr=True)
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._progress: Progress | None = None

    def on_progress(self, progress: Progress) -> None:

        with self._lock:
            if progress is not self._progress:  # a new campaign: keep the last table, start another
                if self._live is not None:
                    self._stop()
                self._progress = progress
                self._live = Live(
                    _progress_table(progress),
                    console=self.console,
                    refresh_per_second=4,
                    transient=False,
                    auto_refresh=sys.stderr.isatty(),
                )
                self._live.start()
            elif self._live is not None:
                self._live.update(_progress_table(progress))
            if progress.finished and self._live is not None:  # the table stays on screen; the display is free
                self._live.update(_progress_table(progress))
                self._stop()

    def _stop(self) -> None:
        assert self._live is not None  # callers hold a live display
        self._live.stop()
        self._live = None
        if not self.console.is_terminal:  # a pipe or file: what follows starts on a line of its own
            self.console.line()

    def log(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def __enter__(self) -> LiveProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            if self._live is not None:
                self._stop()


@click.command()
@click.argument("campaign_file", type=click.Path(dir_okay=False))
@measure_options(
    fixed=("rounds", "repetitions", "steps", "warmup", "energy"),
    help={"results_root": "Results root; the campaign writes to RESULTS/<name>/."},
)
@click.option(
    "--tune",
    "tune_trials",
    type=click.IntRange(min=1),
    default=None,
    metavar="TRIALS",
    help="First tune what the campaign compiles (MetaSchedule, up to TRIALS measured candidates per "
    "kernel, on one selected phone per CPU target; see `workloads tune`).",
)
@click.option(
    "--tune-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Time budget per tuned program.",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long for a phone another run holds (default: stop, naming that run).",
)
def run(
    campaign_file: str, settings: MeasureSettings, tune_trials: int | None, tune_minutes: float, wait_s: float
) -> None:
    """Run a campaign: every workload x variant x governor cell on every selected device.

    Exit status: 0 when every cell is ok or skipped, 3 when some cells failed (the rest is kept; `results show`
    names each reason), 1 on bad input (nothing run), 130 when interrupted."""

    campaign = load_campaign(campaign_file)
    if tune_trials and settings.cluster:
        raise UserError(
            "--tune tunes on this host's phones; on a cluster tune first with `autlearn workloads tune "
            "--cluster ADDRESS --device HOST/SERIAL`"
        )
    if tune_trials:
        tune_for_campaign(
            campaign,
            trials=tune_trials,
            minutes=tune_minutes,
            threads=settings.threads,
            say=lambda s: click.echo(f"[tune] {s}", err=True),
        )
    try:
        with LiveProgress() as display:
            outcome = run_campaign(
                campaign,
                settings,
                artifact_provider(settings.artifacts, log=display.log),
                display.on_progress,
                display.log,
                wait_s=wait_s,
            )
    except (KeyboardInterrupt, SystemExit) as exc:  # SIGTERM arrives as SystemExit(143) (autlearn.profiler.governor)
        click.echo(
            "autlearn: interrupted: governors restored; the cells under way are stored as interrupted (nothing "
            f"they measured is kept): `autlearn run --resume {campaign_file}` finishes the campaign",
            err=True,
        )
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
        raise click.exceptions.Exit(code) from None
    click.echo(
        f"{campaign.name}: {outcome.ok} ok, {outcome.failed} failed, {outcome.skipped} skipped, "
        f"{outcome.resumed} already done -> {outcome.results_dir}"
    )
    if outcome.failed:  # measured cells are kept; scripts see that some failed (`results show` says why)
        raise click.exceptions.Exit(EXIT_CELLS_FAILED)


@click.group()
def results() -> None:
    """Inspect a results directory."""


@results.command("show")
@click.argument("results_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def show(results_dir: str, as_json: bool) -> None:
    """Per-cell summaries (median, 95% CI, CV) and failed/skipped cells with reasons."""

    status = load_status(results_dir)
    loaded = load_summaries(results_dir)
    for line in bad_cell_lines(loaded):  # never shown as data: named, one line each
        click.echo(f"autlearn: {line}", err=True)
    summaries = sorted_summaries(loaded)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "summaries": json.loads(summaries.to_json(orient="records")),
                    "status": json.loads(status.to_json(orient="records")),
                },
                indent=1,
            )
        )
        return
    _print_summaries(summaries)
    bad = status[status["status"] != "ok"] if len(status) else status
    if len(bad):
        t = Table(title="failed / skipped / interrupted cells", title_justify="left")
        for col in ("cell", "status", "reason"):
            t.add_column(col)
        for _, r in bad.iterrows():
            t.add_row(Text(str(r.get("label", r["cell_id"]))), r["status"], Text(one_line(r["reason"])))
        Console(width=None if sys.stdout.isatty() else 200).print(t)


def _print_summaries(df: pd.DataFrame) -> None:

    if df.empty:
        click.echo("no finished cells")
        return
    t = Table(title=f"{len(df)} finished cell(s) (times in ms per step)", title_justify="left")
    df = df.copy()
    for c in ("median", "ci_low", "ci_high"):
        if f"{c}_ns" in df.columns:
            df[f"{c}_ms"] = df[f"{c}_ns"] / 1e6
    # energy per step, or why there is none; the model arguments only when a campaign varies them
    joules = df["energy_j_median"].tolist() if "energy_j_median" in df.columns else [float("nan")] * len(df)
    notes = df["energy_note"].tolist() if "energy_note" in df.columns else [""] * len(df)
    df["energy"] = [f"{j:.3g} J" if j == j else (energy_reason(n) or "none") for j, n in zip(joules, notes)]
    if "config" in df.columns and df["config"].astype(str).nunique() < 2:
        df = df.drop(columns="config")
    cols = (
        "device_model",
        "workload",
        "variant",
        "config",
        "batch",
        "affinity",
        "governor_requested",
        "governor_applied",
        "n",
        "median_ms",
        "ci_low_ms",
        "ci_high_ms",
        "cv",
        "energy",
        "harness_s",
        "wait_s",
        "labels",
    )
    present = [c for c in cols if c in df.columns]
    for c in present:
        t.add_column(c)
    for _, r in df.iterrows():
        t.add_row(*(Text(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])) for c in present))
    Console(width=None if sys.stdout.isatty() else 220).print(t)


def _percent(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """A percentage written with its sign, `5%` -> 0.05 (a bare number would be ambiguous: 5 or 0.05?)."""
    text = value.strip()
    try:
        fraction = float(text.removesuffix("%")) / 100 if text.endswith("%") else math.nan
    except ValueError:
        fraction = math.nan
    if not 0 <= fraction < 100:
        raise click.BadParameter(f"{value!r} is not a percentage such as 5%")
    return fraction


def _kinds(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    kinds = tuple(k.strip().lower() for v in value for k in v.split(",") if k.strip())
    bad = sorted(set(kinds) - set(KINDS))
    if bad:
        raise click.BadParameter(f"{', '.join(bad)}: not one of {', '.join(KINDS)}")
    return kinds


_ONE_DIR = ("baseline", "candidate", "min_ratio")
_TWO_DIRS = ("max_slowdown", "allow_different", "json_path", "junit_path")


@results.command("compare")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False), metavar="BASE [CANDIDATE]")
@click.option(
    "--max-slowdown",
    callback=_percent,
    default="5%",
    metavar="PERCENT",
    show_default=True,
    help="Two directories: a cell significantly slower (or using more energy) by at least this much is a regression.",
)
@click.option(
    "--allow-different",
    multiple=True,
    callback=_kinds,
    metavar="KINDS",
    help="Two directories: compare pairs that differ in these anyway (refused otherwise; comma-separated): tools "
    "(tool versions), artifact (its hash), device (probed facts, governor applied); the output and JSON name each.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Two directories: write the verdicts here.")
@click.option(
    "--junit", "junit_path", type=click.Path(dir_okay=False), help="Two directories: write JUnit XML here (CI)."
)
@click.option("--baseline", default="unoptimized", show_default=True, help="One directory: the baseline variant.")
@click.option("--candidate", default="full", show_default=True, help="One directory: the candidate variant.")
@click.option(
    "--min-ratio",
    default=1.05,
    show_default=True,
    type=click.FloatRange(1.0, 100.0),
    help="One directory: the smallest ratio of medians called faster or slower.",
)
@click.option(
    "--alpha",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0.0001, 0.5),
    help="Significance level of the Mann-Whitney U test.",
)
@click.pass_context
def compare_cmd(
    ctx: click.Context,
    dirs: tuple[str, ...],
    max_slowdown: float,
    allow_different: tuple[str, ...],
    json_path: str | None,
    junit_path: str | None,
    baseline: str,
    candidate: str,
    min_ratio: float,
    alpha: float,
) -> None:
    """Compare two runs cell by cell (a regression gate), or two variants within one run.

    \b
    autlearn results compare BASE CANDIDATE [--max-slowdown 5%] [--json F] [--junit F]
      Cells match by device, workload, config, variant, batch, governor and affinity. A cell regresses when it is
      significantly slower (Mann-Whitney U, p < alpha) AND its median step time is at least --max-slowdown above
      BASE's (asv-style; the same for energy per step where both have it); the ratio's 95% bootstrap CI is shown.
      Pairs whose tool versions, artifact hash or device facts differ are refused unless --allow-different names
      them. Exit status: 0 no regression; 1 a regression, a refused pair, nothing matched, or bad input.

    \b
    autlearn results compare DIR --baseline unoptimized --candidate full
      Two variants of one run: Mann-Whitney U plus --min-ratio (a speedup needs both).
    """

    given = {
        n for n in (*_ONE_DIR, *_TWO_DIRS) if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT
    }
    if len(dirs) > 2:
        raise click.UsageError("at most two results directories: BASE CANDIDATE")
    if len(dirs) == 2 and given & set(_ONE_DIR):
        raise click.UsageError("--baseline, --candidate and --min-ratio compare variants within ONE directory")
    if len(dirs) == 1 and given & set(_TWO_DIRS):
        raise click.UsageError(
            "--max-slowdown, --allow-different, --json and --junit compare two directories: BASE CANDIDATE"
        )
    if len(dirs) == 1:
        _compare_variants(dirs[0], baseline, candidate, min_ratio, alpha)
        return
    result = gate(dirs[0], dirs[1], max_slowdown=max_slowdown, alpha=alpha, allow=allow_different)
    for line in result.warnings:
        click.echo(f"autlearn: {line}", err=True)
    _print_gate(result)
    for path, write in ((json_path, result.write_json), (junit_path, result.write_junit)):
        try:
            if path:
                write(path)
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    error = result.error()
    if error is not None:
        raise error
    if result.exit_code:
        raise click.exceptions.Exit(result.exit_code)


def _print_gate(result: GateResult) -> None:

    limit = 1 + result.max_slowdown
    t = Table(
        title=f"{result.candidate} vs {result.base} (ratio = candidate / base median; regression: p < "
        f"{result.alpha:g} and ratio >= {limit:.3g})",
        title_justify="left",
    )
    for col in ("cell", "base ms", "candidate ms", "ratio [95% CI]", "p", "energy ratio", "verdict"):
        t.add_column(col)
    for c in result.cells:
        s, e = c.time, c.energy
        t.add_row(
            Text(c.key.label),
            f"{s.baseline_median / 1e6:.3g}" if s else "",
            f"{s.candidate_median / 1e6:.3g}" if s else "",
            f"{s.ratio:.3g} [{s.ci_low:.3g}, {s.ci_high:.3g}]" if s else "",
            f"{s.p_value:.2g}" if s else "",
            f"{e.ratio:.3g} (p={e.p_value:.2g})" if e else "",
            Text(c.status if c.compared else f"{c.status}: {one_line(c.reason, 120)}"),
        )
    Console(width=None if sys.stdout.isatty() else 220).print(t)
    regressions = result.with_status(REGRESSION)
    summary = f"{result.verdict}: {len(regressions)} regression(s) in {len(result.compared)} compared cell(s)"
    summary += f" (significantly slower by {result.max_slowdown * 100:g}% or more)"
    unmatched = result.with_status(ONLY_BASE, ONLY_CANDIDATE)
    if unmatched:
        summary += f"; {len(unmatched)} cell(s) in one directory only"
    despite = [c for c in result.compared if c.differences]
    if despite:
        kinds = sorted({d.kind for c in despite for d in c.differences})
        summary += f"; {len(despite)} compared despite different {', '.join(kinds)} (--allow-different)"
    click.echo(summary)
    for c in regressions:
        click.echo(f"regression: {c.key.label}: {c.reason}")


def _compare_variants(results_dir: str, baseline: str, candidate: str, min_ratio: float, alpha: float) -> None:
    """Two variants within one results directory, cell by cell (the model config is part of the cell)."""

    df = load_results(results_dir)
    for line in bad_cell_lines(df):
        click.echo(f"autlearn: {line}", err=True)
    if df.empty:
        raise UserError(f"{results_dir}: no finished cells to compare")
    timed = df[~df["warmup"]]
    # the model config is part of the key: two configs of one model are never pooled, and within a side every
    # pooled cell must share its fixed metadata (artifact, tool versions, device model, ...)
    keys = [k for k in KEY if k != "variant"]
    check_poolable(timed[timed["variant"].isin([baseline, candidate])], by=[*keys, "variant"])
    t = Table(title=f"{candidate} vs {baseline} (ratio = baseline / candidate median step time)", title_justify="left")
    for col in ("device", "workload", "batch", "governor", "baseline ms", "candidate ms", "ratio", "p", "verdict"):
        t.add_column(col)
    rows = 0
    for key, g in timed.groupby(keys):
        a = g[g["variant"] == baseline]["step_ns"] / 1e6
        b = g[g["variant"] == candidate]["step_ns"] / 1e6
        if a.empty or b.empty:
            continue
        c = compare(a.to_numpy(), b.to_numpy(), alpha=alpha, min_ratio=min_ratio)
        t.add_row(
            Text(str(key[0])),
            _workload_label(key[1], key[2]),
            str(key[3]),
            Text(str(key[4])),
            f"{c.baseline_median:.3g}",
            f"{c.candidate_median:.3g}",
            f"{c.ratio:.3g}",
            f"{c.p_value:.2g}",
            c.verdict,
        )
        rows += 1
    if not rows:
        raise UserError(f"no cell pair has both variants {baseline!r} and {candidate!r}")
    Console(width=None if sys.stdout.isatty() else 200).print(t)


def _workload_label(workload: str, config: str) -> Text:
    """The workload with its config when it has one (two configs of one model are separate rows)."""

    return Text(workload if config in ("", "{}") else f"{workload} {config}")
