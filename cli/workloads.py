"""`autlearn workloads build|list`: compile training programs into self-contained on-device artifacts."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from autlearn.cli.options import option_group, parse_sets, set_option
from autlearn.engine.cluster import tune_on_cluster
from autlearn.profiler.device import Device
from autlearn.profiler.errors import ArtifactError, ConfigError
from autlearn.profiler.lease import PhoneLease
from autlearn.workloads import registry
from autlearn.workloads.artifact import build_to, list_artifacts
from autlearn.workloads.metaschedule import TuneSettings, tune_devices

# Mirrors workloads.compile.VARIANTS / runner_build.ABIS (checked again there); kept literal so `--help` needs no
# heavy imports. Models: the registered families (autlearn.workloads.registry, cheap to import).
MODELS = tuple(sorted(registry.names()))  # for --help; checks ask the registry
VARIANTS = ("full", "compressed", "unoptimized", "cached")
ABIS = ("x86_64", "arm64-v8a")
DEFAULT_DIR = Path("artifacts")  # relative: autlearn.workloads.artifact.default_artifact_dir's root


def _check(value: str, valid: tuple[str, ...], key: str) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {key} {value!r} (choose from {', '.join(valid)})", key=key)


@click.group()
def workloads() -> None:
    """Compile training workloads into artifacts (runner + tensors + manifest) and list them."""


@workloads.command()
@click.option("--model", required=True, metavar="|".join(MODELS), help="Workload model.")
@click.option("--variant", default="full", show_default=True, metavar="|".join(VARIANTS), help="Compilation variant.")
@click.option("--abi", required=True, metavar="|".join(ABIS), help="Android ABI of the target phones.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Artifact directory (replaced). Default: artifacts/<model>-<variant>-<abi>[-<overrides>].",
)
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Batch size (model default otherwise).")
@set_option()
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Take the first batch from this data set (LEAF FEMNIST JSON / Shakespeare text).",
)
def build(
    model: str,
    variant: str,
    abi: str,
    out: Path | None,
    batch: int | None,
    sets: tuple[str, ...],
    data_path: Path | None,
) -> None:
    """Compile MODEL as VARIANT for ABI and write a verified artifact."""

    _check(model, tuple(sorted(registry.names())), "model")
    _check(variant, VARIANTS, "variant")
    _check(abi, ABIS, "abi")
    config = parse_sets(sets)
    if batch is not None:
        config["batch"] = batch
    art = build_to(model, variant, abi, out, config, data_path, log=lambda msg: click.echo(msg, err=True))
    b = art.manifest["build"]
    rt = "cached" if b.get("runtime_cached") else f"built in {b.get('runtime_build_s', 0):.0f} s"
    click.echo(f"{art.path}  hash {art.hash[:16]}  ({b.get('build_s', 0):.1f} s; TVM runtime {rt})")


@workloads.command(name="list")
@click.argument("directory", type=click.Path(path_type=Path), default=None, required=False)
def list_(directory: Path | None) -> None:
    """Table of the artifacts under DIRECTORY (default: artifacts/, where `workloads build` writes), verified
    against their hashes."""

    if directory is None:
        directory = DEFAULT_DIR
        if not directory.is_dir():  # nothing built yet is not an error; a DIRECTORY given that is missing is
            click.echo(f"no artifacts yet (looked in {directory.resolve()}; `autlearn workloads build` writes there)")
            return
    found = list_artifacts(directory)
    if not found:
        click.echo(f"no artifacts yet (looked in {directory.resolve()})")
        return
    table = Table(title=f"artifacts under {directory}")
    for col in ("artifact", "model", "variant", "abi", "batch", "hash", "MB", "built"):
        table.add_column(col)
    bad = []
    for a in found:
        if isinstance(a, tuple):
            bad.append(a)
            table.add_row(a[0].name, "-", "-", "-", "-", "CORRUPT", "-", "-")
            continue
        size = sum(f["bytes"] for f in a.manifest["files"].values()) / 1e6
        batch = (a.manifest.get("config") or {}).get("batch", "-")
        table.add_row(
            a.path.name,
            str(a.model),
            str(a.variant),
            a.abi,
            str(batch),
            a.hash[:16],
            f"{size:.1f}",
            str(a.manifest.get("build", {}).get("created_at", "-")),
        )
    console = Console()
    if not console.is_terminal:  # piped / captured: never truncate names or hashes
        console = Console(width=200)
    console.print(table)
    if bad:
        raise ArtifactError(f"{len(bad)} of {len(found)} artifacts are corrupt; first: {bad[0][1]}")


@dataclass(frozen=True)
class TuneOptions:
    """How long and for what MetaSchedule tunes: candidates per kernel, the whole run's minutes, the TOP heaviest
    kernels (None: those carrying 90 % of the FLOPs), the compile target (None: the device's probed CPU), runner
    threads (None: the runner's own)."""

    trials: int = 64
    minutes: float = 30.0
    top: int | None = None
    target_id: str | None = None
    threads: int | None = None


tune_options = option_group(
    TuneOptions,
    "tuning",
    {
        "trials": click.option(
            "--trials",
            "trials",
            type=click.IntRange(min=1),
            default=64,
            show_default=True,
            help="Measured candidates per kernel (records already in the database count: a rerun resumes).",
        ),
        "minutes": click.option(
            "--minutes",
            "minutes",
            type=click.FloatRange(min=0, min_open=True),
            default=30.0,
            show_default=True,
            help="Time budget of the whole run.",
        ),
        "top": click.option(
            "--top",
            "top",
            type=click.IntRange(min=1),
            default=None,
            help="Tune the TOP heaviest kernels (default: those carrying 90 %% of the FLOPs).",
        ),
        "target_id": click.option(
            "--target",
            "target_id",
            default=None,
            metavar="ABI@MCPU[,ATTR...]",
            help="Compile target (default: the device's probed CPU).",
        ),
        "threads": click.option(
            "--threads", "threads", type=click.IntRange(min=1), default=None, help="Runner threads on the device."
        ),
    },
)


@workloads.command()
@click.option(
    "--device",
    "serials",
    required=True,
    multiple=True,
    help="adb serial of the phone that measures the candidates; repeat it for several phones of one CPU "
    "target, which tune their shares of the kernels in parallel.",
)
@click.option("--model", required=True, metavar="|".join(MODELS), help="Workload model.")
@click.option(
    "--variant",
    default="full",
    show_default=True,
    metavar="full|compressed|cached",
    help="Compilation variant (unoptimized is never tuned).",
)
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Batch size (model default otherwise).")
@set_option("Model config override, repeatable.")
@tune_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--cluster",
    "address",
    default=None,
    metavar="ADDRESS",
    help="The phones are on a Ray cluster's host (--device HOST/SERIAL): that host's agent tunes, and the "
    "databases come back here.",
)
def tune(
    serials: tuple[str, ...],
    model: str,
    variant: str,
    batch: int | None,
    sets: tuple[str, ...],
    tuning: TuneOptions,
    as_json: bool,
    address: str | None,
) -> None:
    """Tune MODEL's kernels with MetaSchedule, measuring every candidate on the phone --device through adb.

    The database (one per CPU target, under $AUTLEARN_HOME/tuning/) is used by every later build for that
    target; a kernel keeps its hand schedule where that was as fast on the device."""

    _check(model, tuple(sorted(registry.names())), "model")
    config = parse_sets(sets)
    if batch is not None:
        config["batch"] = batch
    say = lambda msg: click.echo(f"[tune] {msg}", err=True)  # noqa: E731
    phones = list(dict.fromkeys(serials))
    settings = TuneSettings(trials=tuning.trials, minutes=tuning.minutes, top=tuning.top, threads=tuning.threads)
    if address:
        results = tune_on_cluster(
            address, phones, model, variant, target_id=tuning.target_id, settings=settings, say=say, **config
        )
    else:
        with contextlib.ExitStack() as leases:  # a phone another run (or tune) holds stops this one with one line
            for s in phones:
                leases.enter_context(PhoneLease(Device(s), f"tune {model}", "tuning", say=say))
            results = tune_devices(
                phones, model, variant, target_id=tuning.target_id, settings=settings, say=say, **config
            )
    if len(results) > 1:
        if as_json:
            click.echo(json.dumps(results, indent=1))
            return
        for r in results:
            click.echo(f"{r['measured_on']}: {r['tuned_tasks']} kernels, {r['trials']} trials in {r['seconds']:.0f} s")
        return
    (result,) = results
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    for k in result["kernels"]:
        h = "-" if k["hand_ms"] is None else f"{k['hand_ms']:.4f}"
        t = "-" if k["tuned_ms"] is None else f"{k['tuned_ms']:.4f}"
        click.echo(f"{k['name']:<40} hand {h:>10} ms  tuned {t:>10} ms  keeps {k['kept']}  ({k['trials']} trials)")
    click.echo(
        f"database {result['database']} ({result['digest'][:12]}); {result['trials']} trials in "
        f"{result['seconds']:.0f} s; {result['resumed_records']} records were already there"
    )
