"""`autlearn lab up|down|status`: the virtual phone lab from the command line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from autlearn.testbed.cluster_lab import ClusterLab, host_env
from autlearn.testbed.lab import DEFAULT_BASE_PORT, Lab, expand_profiles, monsoon_phones, next_free_ports
from autlearn.testbed.profiles import load_profile

if TYPE_CHECKING:
    from rich.console import Console


def _console() -> Console:

    return Console()


@click.group()
def lab() -> None:
    """Virtual phones on 127.0.0.1, attached to the adb server (ANDROID_ADB_SERVER_PORT, default 5037)."""


@lab.command()
@click.option(
    "-n", "--count", type=int, default=None, help="Number of phones (profiles are cycled); default: one per profile."
)
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    metavar="NAME",
    help="Profile to start (repeatable); default: legacy, modern, unrooted.",
)
@click.option(
    "--base-port",
    type=int,
    default=None,
    help=f"Port of the first phone; the others follow. Default: the first free ports from {DEFAULT_BASE_PORT}.",
)
@click.option(
    "--monsoon",
    "monsoon",
    multiple=True,
    is_flag=False,
    flag_value="all",
    metavar="PROFILE|NAME|all",
    help="Give a phone a simulated Monsoon (serial SIM-<port>) following its modeled power: every phone "
    "of a profile, one phone by name (unrooted-1), or `all` (repeatable). Bare --monsoon = all.",
)
@click.option(
    "--governor",
    metavar="NAME",
    help="Boot every phone with this governor on every cluster instead of "
    "its profile's default (e.g. performance: no governor ramps).",
)
@click.option(
    "--keep-warm/--no-keep-warm",
    default=True,
    show_default=True,
    help="Keep-warm spinners while a shell process runs: throttled and unthrottled times see the same host "
    "speed (exact ratios; unthrottled runs ~30 %% slower on a 2-vCPU VM).",
)
@click.option(
    "--hosts",
    type=click.IntRange(1, 8),
    default=1,
    show_default=True,
    help="Simulated USB hosts: with 2 or more, a local Ray cluster with one node, adb server and agent per "
    "host; the phones are dealt to the hosts in turn and the monitors plug into host1. Run campaigns "
    "with --cluster ADDRESS (printed).",
)
def up(
    count: int | None,
    profiles: tuple[str, ...],
    base_port: int | None,
    monsoon: Sequence[str],
    governor: str | None,
    keep_warm: bool,
    hosts: int,
) -> None:
    """Start the lab (replacing a previous one) and connect its phones to adb."""

    chosen = expand_profiles(profiles, count)
    for name in dict.fromkeys(chosen):
        load_profile(name).with_governor(governor)  # an unknown profile or governor fails before anything stops
    monsoon = list(monsoon)
    if hosts > 1:
        return _up_hosts(chosen, hosts, monsoon, governor, keep_warm, base_port)
    monsoon_phones(monsoon, chosen)  # so does an unknown --monsoon name
    lab_ = Lab()
    if base_port is None:
        lab_.down()  # a previous lab's ports are about to be free
        base_port = next_free_ports(len(chosen), DEFAULT_BASE_PORT)
    phones = lab_.up(chosen, base_port, monsoon=monsoon, governor=governor, keep_warm=keep_warm)
    any_monsoon = any(p.monsoon for p in phones)
    table = Table(title=f"virtual lab: {len(phones)} phone(s) up")
    cols = ("name", "serial", "profile", "port") + (("monsoon",) if any_monsoon else ())
    for col in cols:
        table.add_column(col)
    for p in phones:
        table.add_row(p.name, p.serial, p.profile, str(p.port), *((p.monsoon or "",) if any_monsoon else ()))
    _console().print(table)


def _up_hosts(
    chosen: list[str], hosts: int, monsoon: list[str], governor: str | None, keep_warm: bool, base_port: int | None
) -> None:

    if base_port is not None:
        raise click.UsageError("--base-port: with --hosts every host's phones take the first free ports")
    per_host = [chosen[i::hosts] for i in range(hosts)]
    if any(not p for p in per_host):
        raise click.UsageError(f"--hosts {hosts}: give at least {hosts} phones (-n)")
    monsoon_phones(monsoon, per_host[0])  # the monitors plug into host1: an unknown name fails here
    Lab().down()
    cl = ClusterLab()
    address = cl.up(per_host, monsoon=[monsoon], governor=governor, keep_warm=keep_warm)
    table = Table(title=f"virtual lab: {len(chosen)} phone(s) on {hosts} hosts (Ray cluster {address})")
    for col in ("host", "adb server", "name", "serial", "profile", "monsoon"):
        table.add_column(col)

    for h in cl.hosts():
        for p in Lab(Path(h["home"])).phones():
            table.add_row(h["name"], str(h["adb_port"]), p.name, p.serial, p.profile, p.monsoon or "")
    _console().print(table)
    click.echo(f"run campaigns with: autlearn run CAMPAIGN.toml --cluster {address}")


@lab.command()
def down() -> None:
    """Disconnect and stop every phone of the lab (and the hosts of a `--hosts` lab)."""

    hosts = ClusterLab().down()
    if hosts:
        click.echo(f"lab down: stopped {hosts} simulated host(s) and their Ray cluster")
    phones = Lab().down()
    if phones or not hosts:
        click.echo(f"lab down: stopped {len(phones)} phone(s)" if phones else "lab down: no lab was running")


@lab.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Show the lab's phones, whether they run, and their adb state."""

    cl = ClusterLab()
    hosts = [("", r) for r in Lab().status()]
    for host in cl.hosts():  # a `lab up --hosts` lab: each host's phones on its own adb server
        with host_env(host["env"]):
            hosts += [(host["name"], r) for r in Lab(Path(host["home"])).status()]
    rows = [r for _, r in hosts]
    if as_json:
        click.echo(
            json.dumps({"cluster": cl.address, "phones": [{**r.to_json(), "host": h} for h, r in hosts]}, indent=2)
        )
        return
    if not rows:
        click.echo("lab: no phones (start them with `autlearn lab up`)")
        return
    table = Table(title="virtual lab" + (f" (Ray cluster {cl.address})" if cl.address else ""))
    for col in ("host", "name", "serial", "profile", "port", "pid", "process", "adb"):
        table.add_column(col)
    for h, r in hosts:
        p = r.phone
        table.add_row(
            h or "-",
            p.name,
            p.serial,
            p.profile,
            str(p.port),
            str(p.pid),
            "running" if r.alive else "dead",
            r.adb_state,
        )
    _console().print(table)
    scales = {r.time_scale for r in rows if r.alive}
    for scale in sorted(scales):
        click.echo(f"time scale: {scale}")
