"""`autlearn run CAMPAIGN.toml` and `autlearn results show|compare`."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import click

from profiler.errors import ArtifactError, UserError


def autlearn_home() -> Path:
    return Path(os.environ.get("AUTLEARN_HOME") or Path.home() / ".autlearn")


def _code_fingerprint() -> str:
    """Hash of the code that turns a model into an artifact: a change to it must not reuse cached artifacts."""
    import workloads

    root = Path(workloads.__file__).parent
    h = hashlib.sha256()
    for p in sorted([*root.glob("*.py"), *root.glob("runner/**/*.cc"), *root.glob("runner/**/*.h"),
                     *root.glob("tuning/**/*.json")]):
        if p.name not in ("cli.py", "prune_cli.py", "tables_cli.py"):
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def build_jobs() -> int:
    """Parallel artifact builds: $AUTLEARN_BUILD_JOBS, else one per core, at most 4 (a TVM build of a 224x224 model
    holds ~1-2 GB)."""
    explicit = os.environ.get("AUTLEARN_BUILD_JOBS", "").strip()
    if explicit:
        if not explicit.isdigit() or int(explicit) < 1:
            raise UserError(f"AUTLEARN_BUILD_JOBS: expected a positive integer, got {explicit!r}")
        return int(explicit)
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 4))
    except AttributeError:   # not Linux
        return max(1, min(os.cpu_count() or 1, 4))


def _build_in_worker(workload: str, variant: str, abi: str, out: str, config: dict) -> str:
    from workloads.artifact import build_artifact

    return str(build_artifact(workload, variant, abi, Path(out), **config).path)


def tuning_label(tuning: Any, variant: str | None = None) -> str:
    """What tuned an artifact's code, for results and reports: the database and how many kernels it scheduled."""
    if variant == "unoptimized":
        return "not optimized"
    if isinstance(tuning, dict):
        return (f"tuned: database {tuning.get('database')} {str(tuning.get('digest'))[:12]} "
                f"({tuning.get('tuned_kernels', '?')} of {tuning.get('kernels', '?')} kernels)")
    return "untuned (hand schedules)"


class ArtifactProvider:
    """(cell, abi) -> ArtifactRef, building each distinct (model, variant, batch, config, abi) once and caching it
    under `cache`; a cached artifact is reused only when it verifies (hash and files) and was built by the same
    tools. `prebuild` builds what a campaign will need in parallel processes (TVM builds are single-threaded)."""

    def __init__(self, cache: Path, log=lambda s: None, jobs: int | None = None):
        self.cache, self.log = Path(cache), log
        self.jobs = build_jobs() if jobs is None else jobs
        self._lock = threading.Lock()
        self._memo: dict[str, Any] = {}
        self._code: str | None = None

    def _key(self, cell, abi: str) -> tuple[str, dict]:
        from workloads.artifact import input_files, tool_versions
        from workloads.compile import tuning_database
        from workloads.families import plain_config

        config = plain_config(dict(cell.config))
        config["batch"] = cell.batch
        self._code = self._code or _code_fingerprint()
        inputs = [hashlib.sha256(p.read_bytes()).hexdigest() for p in input_files(config)]
        untuned = cell.variant == "unoptimized" or config.get("tuning") == "none"
        tuning = None if untuned else tuning_database(abi)   # abi: a target id
        key = hashlib.sha256(json.dumps([cell.workload, cell.variant, abi, config, tool_versions(), self._code,
                                         inputs, tuning and tuning["digest"]],
                                        sort_keys=True, default=str).encode()).hexdigest()[:16]
        return key, config

    def _dir(self, cell, abi: str, key: str) -> Path:
        from workloads.compile import target_key

        return self.cache / f"{cell.workload}-{cell.variant}-{target_key(abi)}-{key}"

    def _ref(self, art):
        from profiler.campaign import ArtifactRef

        meta = art.manifest.get("meta") or {}
        tools = {k: str(v) for k, v in art.manifest.get("tools", {}).items()}
        tools["target"] = str(meta.get("target_id") or art.abi)
        tools["tuning"] = tuning_label(meta.get("tuning"), art.variant)
        return ArtifactRef(art.path, art.hash, tuple(sorted(p.name for p in art.files())), tuple(sorted(tools.items())))

    def __call__(self, cell, abi: str):
        from workloads.artifact import build_artifact, load_artifact

        key, config = self._key(cell, abi)
        with self._lock:
            if key not in self._memo:
                out = self._dir(cell, abi, key)
                try:
                    art = load_artifact(out)
                except ArtifactError:
                    self.log(f"building {cell.workload}/{cell.variant} for {abi} (batch {cell.batch})")
                    art = build_artifact(cell.workload, cell.variant, abi, out, **config)
                self._memo[key] = self._ref(art)
            return self._memo[key]

    def prebuild(self, requests) -> None:
        """Build the artifacts of (cell, abi) `requests` that are not cached, up to `jobs` at a time. A build that
        fails here is left to `__call__`, which builds it again in this process and raises its error there."""
        from concurrent.futures import ProcessPoolExecutor, as_completed
        import multiprocessing

        from workloads.artifact import load_artifact

        todo: dict[str, tuple] = {}
        for cell, abi in requests:
            key, config = self._key(cell, abi)
            if key in self._memo or key in todo:
                continue
            try:
                self._memo[key] = self._ref(load_artifact(self._dir(cell, abi, key)))
            except ArtifactError:
                todo[key] = (cell.workload, cell.variant, abi, str(self._dir(cell, abi, key)), config)
        if len(todo) < 2 or self.jobs < 2:
            return   # nothing to overlap: __call__ builds in this process
        self.log(f"building {len(todo)} artifacts, {min(self.jobs, len(todo))} at a time")
        # spawn, not fork: the campaign has threads (progress, adb) that a forked child must not inherit
        with ProcessPoolExecutor(min(self.jobs, len(todo)), mp_context=multiprocessing.get_context("spawn")) as ex:
            futures = {ex.submit(_build_in_worker, *args): key for key, args in todo.items()}
            for f in as_completed(futures):
                workload, variant, abi, out, config = todo[futures[f]]
                try:
                    self._memo[futures[f]] = self._ref(load_artifact(f.result()))
                    self.log(f"built {workload}/{variant} for {abi} (batch {config['batch']})")
                except Exception:   # noqa: BLE001  (reported when __call__ builds it again)
                    pass


def artifact_provider(cache: Path, log=lambda s: None, jobs: int | None = None) -> ArtifactProvider:
    return ArtifactProvider(cache, log, jobs)


def _progress_table(progress):
    from rich.table import Table
    from rich.text import Text

    t = Table(title="campaign progress", title_justify="left")
    for col in ("device", "cells", "now"):
        t.add_column(col)
    with progress.lock:
        for serial, total in progress.total.items():
            t.add_row(Text(serial), f"{progress.done.get(serial, 0)}/{total}", Text(progress.state.get(serial, "")))
    return t


@click.command()
@click.argument("campaign_file", type=click.Path(dir_okay=False))
@click.option("--resume", is_flag=True, help="Skip cells already finished; rerun the rest.")
@click.option("--results", "results_root", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Results root; the campaign writes to RESULTS/<name>/.")
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="Runner threads (default: runner's own).")
@click.option("--artifacts", "artifact_cache", default=None, type=click.Path(file_okay=False),
              help="Artifact cache (default $AUTLEARN_HOME/artifacts).")
@click.option("--tune", "tune_trials", type=click.IntRange(min=1), default=None, metavar="TRIALS",
              help="First tune what the campaign compiles (MetaSchedule, up to TRIALS measured candidates per "
                   "kernel, on one selected phone per CPU target; see `workloads tune`).")
@click.option("--tune-minutes", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Time budget per tuned program.")
def run(campaign_file: str, resume: bool, results_root: str, threads: int | None, artifact_cache: str | None,
        tune_trials: int | None, tune_minutes: float):
    """Run a campaign: every workload x variant x governor cell on every selected device."""
    from profiler.campaign_config import load_campaign

    campaign = load_campaign(campaign_file)
    if tune_trials:
        from workloads.metaschedule import tune_for_campaign

        tune_for_campaign(campaign, trials=tune_trials, minutes=tune_minutes, threads=threads,
                          say=lambda s: click.echo(f"[tune] {s}", err=True))
    outcome = execute(campaign, Path(results_root), resume=resume, threads=threads, artifact_cache=artifact_cache)
    click.echo(f"{campaign.name}: {outcome.ok} ok, {outcome.failed} failed, {outcome.skipped} skipped, "
               f"{outcome.resumed} already done -> {outcome.results_dir}")


def execute(campaign, results_root: Path, *, resume: bool = False, threads: int | None = None,
            artifact_cache: str | Path | None = None):
    """Run a Campaign with the default artifact provider and a live progress table on stderr -> Outcome. Used by
    `run` and by commands that generate campaigns (`tables build`, `tables validate`, `prune --measure-on`)."""
    from rich.console import Console
    from rich.live import Live

    from profiler.campaign import Progress, run_campaign

    console = Console(stderr=True)
    cache = Path(artifact_cache) if artifact_cache else autlearn_home() / "artifacts"
    provider = artifact_provider(cache, log=lambda s: console.print(f"[dim]{s}[/dim]", markup=True, highlight=False))
    progress = Progress()
    live = Live(_progress_table(progress), console=console, refresh_per_second=4, transient=False,
                auto_refresh=sys.stderr.isatty())
    progress.on_change = lambda _s: live.update(_progress_table(progress))
    with live:
        outcome = run_campaign(campaign, Path(results_root), provider, resume=resume, progress=progress,
                               threads=threads, log=lambda s: console.print(s, markup=False, highlight=False))
        live.update(_progress_table(progress))
    return outcome


@click.group()
def results():
    """Inspect a results directory."""


@results.command("show")
@click.argument("results_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def show(results_dir: str, as_json: bool):
    """Per-cell summaries (median, 95% CI, CV) and failed/skipped cells with reasons."""
    from profiler.store import load_status, load_summaries

    status = load_status(results_dir)
    summaries = load_summaries(results_dir)
    if as_json:
        click.echo(json.dumps({"summaries": json.loads(summaries.to_json(orient="records")),
                               "status": json.loads(status.to_json(orient="records"))}, indent=1))
        return
    _print_summaries(summaries)
    bad = status[status["status"] != "ok"] if len(status) else status
    if len(bad):
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        t = Table(title="failed / skipped cells", title_justify="left")
        for col in ("cell", "status", "reason"):
            t.add_column(col)
        for _, r in bad.iterrows():
            t.add_row(Text(str(r.get("label", r["cell_id"]))), r["status"], Text(str(r["reason"])))
        Console(width=None if sys.stdout.isatty() else 200).print(t)


def _print_summaries(df) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if df.empty:
        click.echo("no finished cells")
        return
    t = Table(title=f"{len(df)} finished cell(s) (times in ms per step)", title_justify="left")
    df = df.copy()
    for c in ("median", "ci_low", "ci_high"):
        if f"{c}_ns" in df.columns:
            df[f"{c}_ms"] = df[f"{c}_ns"] / 1e6
    cols = ("device_model", "workload", "variant", "batch", "governor_requested", "governor_applied", "n",
            "median_ms", "ci_low_ms", "ci_high_ms", "cv", "labels")
    present = [c for c in cols if c in df.columns]
    for c in present:
        t.add_column(c)
    for _, r in df.iterrows():
        t.add_row(*(Text(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])) for c in present))
    Console(width=None if sys.stdout.isatty() else 220).print(t)


@results.command("compare")
@click.argument("results_dir", type=click.Path(file_okay=False))
@click.option("--baseline", default="unoptimized", show_default=True, help="Baseline variant.")
@click.option("--candidate", default="full", show_default=True, help="Candidate variant.")
@click.option("--min-ratio", default=1.05, show_default=True, type=click.FloatRange(1.0, 100.0))
@click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0.0001, 0.5))
def compare_cmd(results_dir: str, baseline: str, candidate: str, min_ratio: float, alpha: float):
    """Compare two variants cell by cell: Mann-Whitney U plus a minimum ratio (a speedup needs both)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from profiler.stats import compare
    from profiler.store import load_results

    df = load_results(results_dir)
    if df.empty:
        raise UserError(f"{results_dir}: no finished cells to compare")
    timed = df[~df["warmup"]]
    keys = ["device_serial", "workload", "batch", "governor_requested", "affinity"]
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
        t.add_row(Text(str(key[0])), str(key[1]), str(key[2]), Text(str(key[3])), f"{c.baseline_median:.3g}",
                  f"{c.candidate_median:.3g}", f"{c.ratio:.3g}", f"{c.p_value:.2g}", c.verdict)
        rows += 1
    if not rows:
        raise UserError(f"no cell pair has both variants {baseline!r} and {candidate!r}")
    Console(width=None if sys.stdout.isatty() else 200).print(t)
