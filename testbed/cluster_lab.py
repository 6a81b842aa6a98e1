"""A virtual lab of several USB hosts on this one machine: a real local Ray cluster with one node per host
(`ray start --block`, each in its own process group, labelled `autlearn-host=hostN`), and per host its own adb
server port, its own home (pending snapshots, simulated monitors), its own virtual phones and its agent.

    lab = ClusterLab(home)
    address = lab.up([["legacy"], ["modern", "unrooted"]], monsoon=[["legacy"], []])
    ...   # autlearn run CAMPAIGN --cluster ADDRESS
    lab.down()

State: `$AUTLEARN_HOME/lab/cluster.json`; host N lives in `$AUTLEARN_HOME/hosts/hostN`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from autlearn.engine.cluster import start_agent
from autlearn.profiler import paths
from autlearn.profiler.errors import LabError
from autlearn.testbed.lab import Lab, PhoneInfo, find_adb, next_free_ports

NODE_START_S = 60.0


def host_env(env: dict[str, str]) -> contextlib.AbstractContextManager[None]:
    """This process's environment as host `env` sees it (the lab's Lab objects read it when called)."""
    return paths.env_override(env)


def _ray_bin() -> str:
    exe = Path(sys.executable).with_name("ray")
    if not exe.is_file():
        raise LabError("a multi-host lab needs Ray: pip install 'autlearn[cluster]'")
    return str(exe)


class ClusterLab:
    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home is not None else paths.home()
        self.state_file = self.home / "lab" / "cluster.json"

    def _state(self) -> dict[str, Any]:
        try:
            return cast(dict[str, Any], json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict[str, Any]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_file)

    @property
    def address(self) -> str | None:
        return self._state().get("address")

    def hosts(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._state().get("hosts", []))

    def host(self, name: str) -> dict[str, Any]:
        for h in self.hosts():
            if h["name"] == name:
                return h
        raise LabError(f"no host {name!r} in this lab")

    # -- up / down
    def up(
        self,
        per_host: Sequence[Sequence[str]],
        *,
        monsoon: Sequence[bool | str | Sequence[str]] = (),
        governor: str | None = None,
        keep_warm: bool = True,
        agents: bool = True,
    ) -> str:
        """Start one Ray node, adb server, set of phones (`per_host[i]`: profiles) and agent per host; the
        cluster's address. `monsoon[i]`: host i's `Lab.up(monsoon=)`."""
        self.down()
        ray = _ray_bin()
        gcs_port = next_free_ports(1, 26379, 2000)
        address = f"127.0.0.1:{gcs_port}"
        state: dict[str, Any] = {"address": address, "hosts": []}
        self._save(state)
        try:
            for i, profiles in enumerate(per_host, start=1):
                name = f"host{i}"
                home = self.home / "hosts" / name
                home.mkdir(parents=True, exist_ok=True)
                adb_port = next_free_ports(1, 15037 + 10 * i, 1000)
                env = {"AUTLEARN_HOME": str(home), "ANDROID_ADB_SERVER_PORT": str(adb_port)}
                if os.environ.get("AUTLEARN_CACHE_DIR"):
                    env["AUTLEARN_CACHE_DIR"] = os.environ["AUTLEARN_CACHE_DIR"]
                node = self._start_node(ray, name, address, head=i == 1, env=env, log=home / "ray-node.log")
                host = {
                    "name": name,
                    "home": str(home),
                    "adb_port": adb_port,
                    "env": env,
                    "node_pid": node,
                    "labs": [str(home)],
                }
                state["hosts"].append(host)
                self._save(state)
                with host_env(env):
                    mon = monsoon[i - 1] if i - 1 < len(monsoon) else False
                    Lab(home).up(
                        list(profiles),
                        next_free_ports(len(profiles)),
                        monsoon=mon,
                        governor=governor,
                        keep_warm=keep_warm,
                    )
            if agents:
                for h in state["hosts"]:
                    self.start_agent(h["name"])
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        return address

    def _start_node(self, ray: str, name: str, address: str, *, head: bool, env: dict[str, str], log: Path) -> int:
        port = address.rpartition(":")[2]
        args = [
            ray,
            "start",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "1",
            "--disable-usage-stats",
            "--object-store-memory",
            str(300 * 1024 * 1024),
            "--labels",
            json.dumps({"autlearn-host": name}),
        ]
        args += ["--head", "--port", port, "--include-dashboard=false"] if head else ["--address", address]
        with open(log, "w") as out:
            proc = subprocess.Popen(
                args,
                env={**os.environ, **env, "RAY_USAGE_STATS_ENABLED": "0"},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + NODE_START_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"ray node {name} did not start: {log.read_text()[-400:]}")
            if "Ray runtime started" in log.read_text():
                return proc.pid
            time.sleep(0.3)
        raise LabError(f"ray node {name} did not start within {NODE_START_S:.0f} s (log: {log})")

    def start_agent(self, name: str) -> dict[str, Any]:

        h = self.host(name)
        return start_agent(cast(str, self.address), name, label=name, env=h["env"])  # a host: the lab is up

    def plug(self, name: str, profile: str, *, monsoon: bool = False, keep_warm: bool = True) -> PhoneInfo:
        """Hot-plug a phone into host `name` while its agent runs: a new virtual phone on that host's adb server
        (with a simulated Monsoon plugged into that host when `monsoon`); its PhoneInfo."""
        h = self.host(name)
        state = self._state()
        home = Path(h["home"]) / "plugged" / str(len(h["labs"]))
        with host_env(h["env"]):
            phone = Lab(home).up([profile], next_free_ports(1), monsoon=monsoon, keep_warm=keep_warm)[0]
            host_lab = Lab(Path(h["home"]))  # the host's lab knows it too: its monitor is found from there
            lab_state = host_lab._read_state()
            lab_state.setdefault("phones", []).append({**phone.to_json(), "name": f"plugged-{phone.port}"})
            host_lab._write_state(lab_state)
        for x in state["hosts"]:
            if x["name"] == name:
                x["labs"].append(str(home))
        self._save(state)
        return phone

    def kill_node(self, name: str) -> None:
        """Simulate a host dying: SIGKILL its Ray node (raylet, workers, its agent); its phones stay as they are."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.host(name)["node_pid"], signal.SIGKILL)

    def down(self) -> int:
        """Stop agents, Ray nodes, phones and adb servers of this lab; how many hosts there were."""
        state = self._state()
        hosts = state.get("hosts", [])
        ray = sys.modules.get("ray")
        if hosts and ray is not None and ray.is_initialized():
            ray.shutdown()  # this process's connection to the cluster about to stop
        for h in reversed(hosts):  # the head last
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(h["node_pid"], signal.SIGTERM)
        for h in reversed(hosts):
            deadline = time.monotonic() + 3  # a raylet drains for up to 30 s: the lab's work is over
            while time.monotonic() < deadline and _group_alive(h["node_pid"]):
                time.sleep(0.2)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(h["node_pid"], signal.SIGKILL)
        for h in hosts:
            with host_env(h["env"]):
                for home in h.get("labs", []):
                    with contextlib.suppress(Exception):
                        Lab(Path(home)).down()
                with contextlib.suppress(Exception):
                    subprocess.run(
                        [find_adb(), "kill-server"], capture_output=True, timeout=30, env={**os.environ, **h["env"]}
                    )
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        return len(hosts)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
