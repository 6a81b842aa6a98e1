"""`autlearn agent start|stop|list --cluster ADDRESS`: the agent of a USB host on a Ray cluster."""

from __future__ import annotations

import json
import socket

import click

from autlearn.engine.cluster import ClusterError, list_agents, start_agent, stop_agent

_cluster = click.option(
    "--cluster",
    "address",
    required=True,
    metavar="ADDRESS",
    help="The Ray cluster (HOST:PORT of its head, as `ray start --head` printed it).",
)


@click.group()
def agent() -> None:
    """The agent of this USB host: runs the cells of its phones for controllers on a Ray cluster."""


@agent.command()
@_cluster
@click.option("--name", default=None, help="The host's name in results (`NAME/serial`); default: the hostname.")
def start(address: str, name: str | None) -> None:
    """Start this host's agent (it keeps running in the cluster after this command returns). It owns this
    shell's adb server (ANDROID_ADB_SERVER_PORT) and the monitors plugged in here, and first puts back what a
    killed agent left changed on its phones."""

    name = name or socket.gethostname()
    info = start_agent(address, name, label=name)
    click.echo(f"agent {info['host']} runs (pid {info['pid']}, adb server port {info['adb_port']})")
    for key, what in info["restored"].items():
        click.echo(f"{key}: left changed by an interrupted run: {what}")


@agent.command()
@_cluster
@click.argument("name")
def stop(address: str, name: str) -> None:
    """Stop host NAME's agent (its running cells end with "host lost"; --resume reruns them)."""

    if not stop_agent(address, name):
        raise ClusterError(f"no agent {name!r} on the cluster at {address}")
    click.echo(f"agent {name} stopped")


@agent.command("list")
@_cluster
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(address: str, as_json: bool) -> None:
    """The agents on the cluster and whether they answer."""

    agents = list_agents(address)
    if as_json:
        click.echo(json.dumps(agents, indent=1))
        return
    if not agents:
        click.echo(f"no agent on the cluster at {address} (start one per USB host: autlearn agent start)")
    for a in agents:
        click.echo(
            f"{a['host']}: "
            + (f"not answering ({a['error']})" if "error" in a else f"pid {a['pid']}, adb server port {a['adb_port']}")
        )
