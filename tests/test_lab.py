"""The lab: up/down/status through the Python API, `autlearn.cli.main.main` and the installed `autlearn` command."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import adbutils
import pytest

from autlearn.cli.main import main
from autlearn.profiler.errors import LabError, ToolMissing
from autlearn.testbed.lab import Lab, PhoneInfo, _is_ours, expand_profiles, find_free_ports
from autlearn.testbed.profiles import known_profiles, load_profile

AUTLEARN = Path(sys.executable).with_name("autlearn")


def _alive(phone: PhoneInfo) -> bool:
    return _is_ours(phone)


def _adb_state(adb_env, serial: str) -> str:
    return next((d.state for d in adb_env.client().list() if d.serial == serial), "absent")


def test_profiles_load_and_differ():
    assert set(known_profiles()) >= {"legacy", "modern", "unrooted"}
    legacy, modern, unrooted = (load_profile(n) for n in ("legacy", "modern", "unrooted"))
    assert (legacy.root_mode, modern.root_mode, unrooted.root_mode) == ("adbd", "su", "none")
    assert [len(c.cpus) for c in legacy.clusters] == [4, 4]
    assert [len(c.cpus) for c in modern.clusters] == [4, 3, 1]
    assert "interactive" in legacy.clusters[0].governors and "interactive" not in modern.clusters[0].governors
    assert legacy.kernel_release.startswith("3.18") and modern.kernel_release.startswith("5.10")
    assert all(p.abi == "x86_64" and "Virtual" in p.model for p in (legacy, modern, unrooted))
    with pytest.raises(LabError, match=r"unknown profile .pixel9. \(known: " + ", ".join(known_profiles())):
        load_profile("pixel9")


def test_expand_profiles():
    assert expand_profiles([], None) == ["legacy", "modern", "unrooted"]
    assert expand_profiles([], 4) == ["legacy", "modern", "unrooted", "legacy"]
    assert expand_profiles(["modern"], 2) == ["modern", "modern"]
    with pytest.raises(LabError):
        expand_profiles([], 0)


def test_api_up_status_down(lab_factory, adb_env):
    lab, phones = lab_factory(["legacy", "legacy"])
    assert [p.name for p in phones] == ["legacy-1", "legacy-2"]
    assert phones[1].port == phones[0].port + 1 and phones[0].serial == f"127.0.0.1:{phones[0].port}"
    assert all(p.root.is_dir() and (p.root / "data/local/tmp").is_dir() for p in phones)
    assert [(s.alive, s.adb_state) for s in lab.status()] == [(True, "device")] * 2
    state = json.loads((lab.home / "lab/state.json").read_text())
    assert [p["serial"] for p in state["phones"]] == [p.serial for p in phones]
    assert lab.down() == phones
    assert not any(_alive(p) for p in phones)
    assert not (lab.home / "lab/state.json").exists() and lab.status() == []
    assert all(_adb_state(adb_env, p.serial) == "absent" for p in phones)  # disconnected, not just dead


def test_context_manager_downs_the_lab(adb_env, tmp_path):
    with Lab(tmp_path) as lab:
        phones = lab.up(["unrooted"], base_port=find_free_ports(1))
        assert adb_env.client().device(phones[0].serial).shell("getprop ro.autlearn.profile") == "unrooted"
    assert not _alive(phones[0])


def test_phone_killed_mid_command_raises_promptly(lab_factory, adb_env):
    lab, (phone,) = lab_factory(["modern"])
    dev = adb_env.client().device(phone.serial)
    threading.Timer(0.7, lab.kill_phone, args=(phone.name,)).start()
    sleeper = f"sleep 30.{os.getpid()}{time.monotonic_ns() % 10000}"  # unique on the host
    t0 = time.monotonic()
    with pytest.raises((adbutils.AdbError, EOFError, OSError)):
        dev.shell2(sleeper, v2=True, timeout=20)
    assert time.monotonic() - t0 < 5
    with pytest.raises((adbutils.AdbError, EOFError, OSError)):  # adbutils' v1 path notices the missing marker
        dev.shell2("echo hi", timeout=5)
    (st,) = lab.status()
    assert not st.alive and st.adb_state in ("offline", "absent", "unknown")
    assert subprocess.run(["pgrep", "-f", sleeper], capture_output=True).stdout == b""  # no orphaned shell


def test_adb_root_per_profile(lab_factory, adb_env):
    lab, phones = lab_factory(["legacy", "modern", "unrooted"])
    legacy, modern, unrooted = (adb_env.client().device(p.serial) for p in phones)
    # legacy: adbd restarts as root (the CLI waits for the disconnect and the reconnect)
    r = adb_env.run("-s", phones[0].serial, "root", timeout=30)
    assert r.returncode == 0 and b"restarting adbd as root" in r.stdout
    adb_env.client().wait_for(phones[0].serial, state="device", timeout=15)
    assert legacy.shell("id -u") == "0" and legacy.shell("whoami") == "root"
    assert "already running as root" in legacy.root()
    r = adb_env.run("-s", phones[0].serial, "unroot", timeout=30)
    assert b"restarting adbd as non root" in r.stdout
    adb_env.client().wait_for(phones[0].serial, state="device", timeout=15)
    assert legacy.shell("id -u") == "2000"
    # modern: production adbd, but su works
    assert "cannot run as root in production builds" in modern.root()
    assert modern.shell("su -c id -u") == "0" and modern.shell("su 0 sh -c 'id -u'") == "0"
    assert modern.shell("id -u") == "2000"
    # unrooted: neither
    assert "cannot run as root" in adb_env.run("-s", phones[2].serial, "root").stdout.decode()
    r = unrooted.shell2("su -c id", v2=True, rstrip=True)
    assert r.returncode == 127 and "not found" in r.stderr


def test_up_replaces_a_stale_lab_and_never_kills_foreign_pids(adb_env, tmp_path):
    lab = Lab(tmp_path)
    old = lab.up(["legacy"], base_port=find_free_ports(1))
    # a stale state also lists a pid that is not a vphone (this very test process): it must survive
    state = json.loads(lab.state_file.read_text())
    state["phones"].append({**old[0].to_json(), "name": "ghost", "pid": os.getpid()})
    lab.state_file.write_text(json.dumps(state))
    try:
        new = lab.up(["unrooted"], base_port=find_free_ports(1))
        assert not _alive(old[0]) and _alive(new[0])
        assert [p.name for p in lab.phones()] == ["unrooted-1"]
    finally:
        lab.down()


def test_failure_half_way_through_up_tears_down(adb_env, tmp_path, monkeypatch):
    calls = []

    def flaky_connect(adb, port, phone):
        calls.append(phone)
        if len(calls) == 2:
            raise LabError("simulated connect failure")
        real_connect(adb, port, phone)

    real_connect = Lab._connect
    monkeypatch.setattr(Lab, "_connect", staticmethod(flaky_connect))
    lab = Lab(tmp_path)
    with pytest.raises(LabError, match="simulated"):
        lab.up(["legacy", "modern"], base_port=find_free_ports(2))
    assert len(calls) == 2 and not any(_alive(p) for p in calls)
    assert not lab.state_file.exists()
    assert _adb_state(adb_env, calls[0].serial) == "absent"


def test_busy_port_is_a_lab_error_naming_the_port(adb_env, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LabError, match=f"port {port} is busy"):
            Lab(tmp_path).up(["legacy"], base_port=port)
    with pytest.raises(LabError, match="5555-5585"):
        Lab(tmp_path).up(["legacy"], base_port=5560)


def test_boot_governor_applies_to_every_cluster_and_must_be_offered(adb_env, tmp_path):
    """`lab up --governor`: every cluster boots with it; a governor some cluster of a chosen profile does not offer
    is one line before anything starts."""
    r = _autlearn(
        "lab",
        "up",
        "--profile",
        "legacy",
        "--profile",
        "oldkernel",
        "--governor",
        "interactive",
        env={**os.environ, "AUTLEARN_HOME": str(tmp_path)},
    )
    err = _one_line_error(r)
    assert "'oldkernel'" in err and "'interactive'" in err and "ondemand" in err
    assert not (tmp_path / "lab/state.json").exists()
    with Lab(tmp_path) as lab:
        (phone,) = lab.up(["modern"], base_port=find_free_ports(1), governor="powersave", keep_warm=False)
        cpufreq = Path(phone.root) / "sys/devices/system/cpu/cpufreq"
        assert {p.read_text().strip() for p in cpufreq.glob("policy*/scaling_governor")} == {"powersave"}
        time.sleep(0.2)  # a few model ticks: powersave holds every cluster at its lowest frequency
        clusters = load_profile("modern").clusters
        cur = [int((cpufreq / f"policy{cl.cpus[0]}/scaling_cur_freq").read_text()) for cl in clusters]
        assert cur == [cl.freqs_khz[0] for cl in clusters]


def test_up_on_a_busy_port_leaves_the_running_lab_alone(lab_factory, adb_env):
    lab, phones = lab_factory(["legacy"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LabError, match=f"port {port} is busy"):
            lab.up(["legacy"], base_port=port)
    assert lab.phones() == phones and all(_alive(p) for p in phones)
    assert [(st.alive, st.adb_state) for st in lab.status()] == [(True, "device")]


# ---- the CLI ----


def test_cli_up_status_down(adb_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTLEARN_HOME", str(tmp_path))
    port = find_free_ports(2)
    assert main(["lab", "up", "-n", "2", "--profile", "modern", "--base-port", str(port)]) == 0
    out = capsys.readouterr().out
    assert f"127.0.0.1:{port}" in out and "modern-2" in out
    assert main(["lab", "status", "--json"]) == 0
    phones = json.loads(capsys.readouterr().out)["phones"]
    assert [(p["name"], p["alive"], p["adb_state"]) for p in phones] == [
        ("modern-1", True, "device"),
        ("modern-2", True, "device"),
    ]
    assert all(p["time_scale"].startswith("sigstop CPU-time budget") for p in phones)  # which throttle is active
    assert main(["lab", "status"]) == 0
    out = capsys.readouterr().out
    assert "modern-1" in out and "time scale: sigstop" in out
    assert main(["lab", "down"]) == 0
    assert "stopped 2" in capsys.readouterr().out
    assert main(["lab", "status", "--json"]) == 0 and json.loads(capsys.readouterr().out)["phones"] == []


def _autlearn(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    exe = [str(AUTLEARN)] if AUTLEARN.exists() else [sys.executable, "-m", "autlearn"]
    return subprocess.run(
        exe + list(args), env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_installed_command_up_status_down(adb_env, tmp_path):
    env = {**os.environ, "AUTLEARN_HOME": str(tmp_path)}
    port = find_free_ports(1)
    r = _autlearn("lab", "up", "--profile", "legacy", "--base-port", str(port), env=env)
    assert r.returncode == 0, r.stderr
    assert f"127.0.0.1:{port}" in r.stdout
    try:
        r = _autlearn("lab", "status", "--json", env=env)
        (phone,) = json.loads(r.stdout)["phones"]
        assert phone["alive"] and phone["adb_state"] == "device"
        # the phone outlived the command that started it
        assert adb_env.client().device(phone["serial"]).shell("getprop ro.autlearn.virtual") == "1"
    finally:
        r = _autlearn("lab", "down", env=env)
    assert r.returncode == 0 and "stopped 1" in r.stdout
    assert _adb_state(adb_env, f"127.0.0.1:{port}") == "absent"


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autlearn: error: "), r.stderr
    return lines[0]


def test_cli_errors_are_one_line(adb_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTLEARN_HOME", str(tmp_path))
    assert main(["lab", "up", "--profile", "bogus"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"autlearn: error: unknown profile 'bogus' (known: {', '.join(known_profiles())})"
    assert main(["lab", "up", "-n", "0"]) == 1
    assert "at least one phone" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["lab", "up", "--profile", "legacy", "--base-port", str(port)]) == 1
        assert f"port {port} is busy" in capsys.readouterr().err
        # the installed command too: one line, exit 1, no traceback
        # (the held port itself: a neighbouring ephemeral port may be taken by anything on a busy host)
        r = _autlearn(
            "lab",
            "up",
            "--profile",
            "legacy",
            "--base-port",
            str(port),
            env={**os.environ, "AUTLEARN_HOME": str(tmp_path)},
        )
        assert f"port {port} is busy" in _one_line_error(r)
    assert not (tmp_path / "lab/state.json").exists()


def test_missing_adb_is_tool_missing(adb_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTLEARN_HOME", str(tmp_path))
    monkeypatch.setenv("ADBUTILS_ADB_PATH", str(tmp_path / "no-such-adb"))
    monkeypatch.setenv("PATH", "/usr/sbin:/sbin" if not shutil.which("adb", path="/usr/sbin:/sbin") else "")
    with pytest.raises(ToolMissing, match="no-such-adb"):
        Lab(tmp_path).up(["legacy"], base_port=find_free_ports(1))
    assert main(["lab", "up", "--profile", "legacy"]) == 1
    assert "adb not found" in capsys.readouterr().err
    r = _autlearn("lab", "up", env=dict(os.environ))
    assert "adb not found" in _one_line_error(r)


def test_background_jobs_outlive_their_shell_but_not_the_lab(lab_factory, adb_env):
    lab, (phone,) = lab_factory(["unrooted"])
    dev = adb_env.client().device(phone.serial)
    marker = f"sleep 7{os.getpid()}{time.monotonic_ns() % 10000}"
    t0 = time.monotonic()
    r = dev.shell2(f"nohup {marker} >/dev/null 2>&1 & echo started", v2=True, rstrip=True)
    assert (r.returncode, r.stdout) == (0, "started") and time.monotonic() - t0 < 5
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout  # still running, like on a phone
    lab.down()
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout == b""
