"""`autlearn devices`: the fleet as a table (or JSON)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from autlearn.engine.worker import put_back
from autlearn.profiler.device import wait_device
from autlearn.profiler.errors import DeviceUnreachable
from autlearn.profiler.fleet import discover
from autlearn.profiler.lease import PhoneLease

if TYPE_CHECKING:
    from autlearn.profiler.fleet import FleetEntry


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-s", "--serial", "serials", multiple=True, help="Only these serials (repeatable).")
@click.pass_context
def devices(ctx: click.Context, as_json: bool, serials: tuple[str, ...]) -> None:
    """List the fleet (real phones and virtual ones) with their probed facts; `devices restore SERIAL` puts back
    what a killed run left changed on a phone."""
    if ctx.invoked_subcommand is not None:
        return

    fleet = discover(serials)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in fleet], indent=2))
    else:
        _table(fleet)
    if serials and any(e.facts is None for e in fleet):
        bad = next(e for e in fleet if e.facts is None)
        raise DeviceUnreachable(bad.error or "unreachable", serial=bad.serial)


def _table(fleet: list[FleetEntry]) -> None:

    table = Table(title=f"{len(fleet)} device(s)", title_justify="left")
    for col in (
        "serial",
        "model",
        "kind",
        "android",
        "abi",
        "cpu target",
        "kernel",
        "cores",
        "governors (current)",
        "root",
        "battery",
        "max temp",
    ):
        table.add_column(col)
    for e in fleet:
        f = e.facts
        if f is None:
            table.add_row(Text(e.serial), Text(e.error or e.state, style="red"), *[""] * 10)
            continue
        current = sorted({p.governor for p in f.policies if p.governor})
        bat = f.battery
        t = f.cpu_target
        target = "?" if t is None else t.key + ("" if t.recognised else " (generic)")
        cells = (
            f.serial,
            f.model,
            "virtual" if f.virtual else "phone",
            f.android or "?",
            f.abi or "?",
            target,
            f.kernel or "?",
            f"{f.cores} ({f.clusters})",
            f"{' '.join(f.governors) or '?'} ({','.join(current) or '?'})",
            f.root,
            f"{bat.capacity}% {bat.status or ''}".strip() if bat and bat.capacity is not None else "?",
            f"{f.max_temp_c:.1f} C" if f.max_temp_c is not None else "?",
        )
        table.add_row(*(Text(str(c)) for c in cells))  # Text: device strings are never parsed as markup
    if not fleet:
        click.echo("no devices: connect a phone over adb, or start the virtual lab with `autlearn lab up`")
        return
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@devices.command()
@click.argument("serial")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Wait this long for a phone another run holds.",
)
def restore(serial: str, wait_s: float) -> None:
    """Put back what a killed run left changed on SERIAL: governors, charging, adbd root, a Monsoon's USB
    passthrough, and fuel-gauge samplers left polling (the next run's lease does the same). Takes the phone's lease:
    a run that holds the phone is never disturbed."""

    with PhoneLease(
        wait_device(serial, max(wait_s, 15.0)),
        "devices-restore",
        "",
        wait_s=wait_s,
        say=lambda s: click.echo(s, err=True),
    ):
        done = put_back({serial})  # what a run's lease does first
    for key, what in sorted(done.items()):
        click.echo(f"{key}: {what}")
    if not done:
        click.echo(f"{serial}: nothing left changed by a run")
    failed = [k for k, w in done.items() if "restored" not in w and "stopped" not in w]
    if failed:  # kept in the journal: the next run (or this command again) retries
        raise click.exceptions.Exit(1)
