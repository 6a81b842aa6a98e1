"""Governor: mapping table, parser, and governor.sh under mksh (or sh) against a fake sysfs tree."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from procs import default_signals

from autlearn.profiler.errors import NotRooted, ParseError
from autlearn.profiler.governor import (
    GovernorGuard,
    GovernorIntent,
    GovernorUnavailable,
    PolicyState,
    format_snapshot,
    parse_available,
    parse_frequency,
    parse_intent,
    parse_state,
    pending,
    resolve_governor,
    restore_pending,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "device_scripts" / "governor.sh"
SHELL = shutil.which("mksh") or "/bin/sh"

MODERN = ("schedutil", "performance", "powersave")
OLD_VENDOR = ("interactive", "ondemand", "userspace", "powersave", "performance")
QCOM = ("walt", "performance", "powersave")
PIXEL = ("sched_pixel", "schedutil", "performance", "powersave")


# ---------------------------------------------------------------------------------------------------------- mapping
@pytest.mark.parametrize(
    "intent, available, applied",
    [
        ("interactive", OLD_VENDOR, "interactive"),
        ("interactive", MODERN, "schedutil"),
        ("interactive", QCOM, "walt"),
        ("interactive", PIXEL, "schedutil"),  # mainline first: comparable across phones
        ("interactive", ("sched_pixel", "powersave"), "sched_pixel"),
        ("interactive", ("ondemand", "powersave"), "ondemand"),
        ("schedutil", QCOM, "walt"),
        ("schedutil", OLD_VENDOR, "interactive"),
        ("powersave", MODERN, "powersave"),
        ("performance", QCOM, "performance"),
        ("powersave", ("schedutil",), None),
        ("performance", ("schedutil",), None),
    ],
)
def test_nearest_mapping_table(intent, available, applied):
    r = resolve_governor(intent, available, "nearest")
    assert r.applied == applied
    assert r.requested == intent
    assert r.exact == (applied == intent)
    assert r.reason


def test_userspace_intent_pins_by_limits_when_userspace_is_missing():
    r = resolve_governor("userspace@1.2GHz", MODERN, "nearest")
    assert (r.requested, r.applied, r.pin_khz) == ("userspace@1200000", "performance", 1_200_000)
    r = resolve_governor("userspace@1200MHz", OLD_VENDOR, "nearest")
    assert (r.applied, r.pin_khz, r.exact) == ("userspace", 1_200_000, True)


def test_skip_and_fail_fallbacks():
    r = resolve_governor("interactive", MODERN, "skip")
    assert r.applied is None and "skip" in r.reason and "schedutil" in r.reason
    assert resolve_governor("powersave", MODERN, "skip").applied == "powersave"
    with pytest.raises(GovernorUnavailable, match="interactive"):
        resolve_governor("interactive", MODERN, "fail")
    with pytest.raises(ValueError, match="nearest"):
        resolve_governor("interactive", MODERN, "closest")


@pytest.mark.parametrize(
    "text, khz",
    [
        (1200000, 1200000),
        ("1200000", 1200000),
        ("1.2GHz", 1200000),
        ("1200 MHz", 1200000),
        ("300000kHz", 300000),
        ("1.5ghz", 1500000),
    ],
)
def test_parse_frequency(text, khz):
    assert parse_frequency(text) == khz


@pytest.mark.parametrize("bad", ["fast", "1.2THz", "", "-5", "0", True, "1e9GHz"])
def test_parse_frequency_rejects(bad):
    with pytest.raises(ValueError):
        parse_frequency(bad)


def test_parse_intent():
    assert parse_intent("Interactive") == GovernorIntent("interactive")
    assert str(parse_intent("userspace@1.2GHz")) == "userspace@1200000"
    for bad in ("ondemand", "userspace", "powersave@1GHz", "walt"):
        with pytest.raises(ValueError):
            parse_intent(bad)


# ---------------------------------------------------------------------------------------------------------- parser
def test_parse_available_and_state():
    info = parse_available(
        "policy=policy0\ncpus=0 1 2 3\ngovernors=schedutil performance\n"
        "frequencies=1800000 300000 300000\ncpuinfo_min=300000\ncpuinfo_max=1800000\n"
        "policy=policy4\ncpus=4 5\ngovernors=schedutil\nfrequencies=\ncpuinfo_min=\ncpuinfo_max=\n"
    )
    assert info[0].cpus == (0, 1, 2, 3) and info[0].frequencies_khz == (300000, 1800000)
    assert info[0].nearest_frequency(1_100_000) == 1_800_000 and info[0].nearest_frequency(1) == 300000
    assert info[1].hw_max_khz is None and info[1].nearest_frequency(5) == 5
    st = parse_state("policy=policy0\ngovernor=schedutil\nmin=300000\nmax=1800000\ncur=\nsetspeed=<unsupported>\n")
    assert st == (PolicyState("policy0", "schedutil", 300000, 1800000, None, "<unsupported>"),)
    assert parse_state(format_snapshot(st)) == st  # snapshot round-trip (cur is not part of it and is None here)


@pytest.mark.parametrize(
    "bad", ["governor=x\n", "policy=p0\nnonsense\n", "policy=\n", "policy=p\nmin=abc\n", "policy=p\ncpus=0 x\n"]
)
def test_parser_rejects_garbage(bad):
    with pytest.raises(ParseError):
        parse_state(bad) if "cpus" not in bad else parse_available(bad)


# ---------------------------------------------------------------------------------------------------------- script
POLICIES = {
    "policy0": {
        "related_cpus": "0 1 2 3",
        "scaling_available_governors": "schedutil userspace performance powersave",
        "scaling_available_frequencies": "300000 576000 1017600 1420800 1804800",
        "cpuinfo_min_freq": "300000",
        "cpuinfo_max_freq": "1804800",
        "scaling_governor": "schedutil",
        "scaling_min_freq": "576000",
        "scaling_max_freq": "1420800",
        "scaling_cur_freq": "1017600",
        "scaling_setspeed": "<unsupported>",
    },
    "policy4": {
        "related_cpus": "4 5 6 7",
        "scaling_available_governors": "schedutil userspace performance powersave",
        "scaling_available_frequencies": "710400 1401600 2016000 2841600",
        "cpuinfo_min_freq": "710400",
        "cpuinfo_max_freq": "2841600",
        "scaling_governor": "schedutil",
        "scaling_min_freq": "710400",
        "scaling_max_freq": "2841600",
        "scaling_cur_freq": "710400",
        "scaling_setspeed": "<unsupported>",
    },
}


def make_sysfs(root: Path, layout: str = "policy") -> Path:
    cpu = root / "sys" / "devices" / "system" / "cpu"
    for name, files in POLICIES.items():
        if layout == "policy":
            d = cpu / "cpufreq" / name
        else:  # old kernels: cpuN/cpufreq, one per CPU
            d = cpu / f"cpu{name[6:]}" / "cpufreq"
            (cpu / f"cpu{int(name[6:]) + 1}" / "cpufreq").mkdir(parents=True)
            (cpu / f"cpu{int(name[6:]) + 1}" / "cpufreq" / "related_cpus").write_text(files["related_cpus"] + "\n")
        d.mkdir(parents=True)
        for f, v in files.items():
            (d / f).write_text(v + "\n")
    return root / "sys"


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class ShellResult:
    stdout: str
    stderr: str
    exit_code: int


class LocalDevice:
    """The device seam, run locally: governor.sh under mksh against a fake sysfs."""

    def __init__(self, sysfs: Path, workdir: Path, serial: str = "fake-1"):
        self.sysfs, self.workdir, self.serial = sysfs, str(workdir), serial
        self.calls: list[tuple[str, ...]] = []

    def _env(self):
        return {**os.environ, "AUTLEARN_SYSFS": str(self.sysfs)}

    def run_script(self, name, *args, root=True):
        self.calls.append(args)
        p = subprocess.run(
            [SHELL, str(ROOT / "device_scripts" / name), *args],
            capture_output=True,
            text=True,
            env=self._env(),
            timeout=30,
        )
        return ShellResult(p.stdout, p.stderr, p.returncode)

    def shell_root(self, cmd):
        p = subprocess.run([SHELL, "-c", cmd], capture_output=True, text=True, env=self._env(), timeout=30)
        return ShellResult(p.stdout, p.stderr, p.returncode)


def sh(sysfs: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SHELL, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "AUTLEARN_SYSFS": str(sysfs)},
    )


@pytest.mark.parametrize("layout", ["policy", "percpu"])
def test_script_available_and_read(tmp_path, layout):
    sysfs = make_sysfs(tmp_path, layout)
    av = sh(sysfs, "available")
    assert av.returncode == 0, av.stderr
    info = parse_available(av.stdout)
    assert [p.name for p in info] == (["policy0", "policy4"] if layout == "policy" else ["cpu0", "cpu4"])
    assert info[1].frequencies_khz[-1] == 2841600 and "userspace" in info[0].governors
    st = parse_state(sh(sysfs, "read").stdout)
    assert (st[0].governor, st[0].min_khz, st[0].max_khz, st[0].cur_khz) == ("schedutil", 576000, 1420800, 1017600)


def test_script_errors(tmp_path):
    sysfs = make_sysfs(tmp_path)
    assert sh(sysfs, "apply", "policy0", "interactive").returncode == 3
    assert sh(sysfs, "apply", "policy9", "schedutil").returncode == 3
    assert sh(sysfs, "apply", "policy0", "schedutil", "9", "1").returncode == 2
    assert sh(sysfs, "setspeed", "policy0", "fast").returncode == 2
    assert sh(sysfs, "apply-all", "policy0", "performance", "300000").returncode == 2
    assert sh(sysfs, "apply-all", "policy9", "performance", "1", "2").returncode == 3
    assert sh(sysfs, "bogus").returncode == 2
    (sysfs / "devices/system/cpu/cpufreq/policy0/scaling_governor").unlink()
    (sysfs / "devices/system/cpu/cpufreq/policy0/scaling_governor").mkdir()  # unwritable, even for root
    r = sh(sysfs, "apply", "policy0", "performance")
    assert r.returncode == 4 and "cannot write" in r.stderr


def test_apply_all_sets_every_policy_and_reads_them_back_in_one_call(tmp_path):
    sysfs = make_sysfs(tmp_path)
    r = sh(sysfs, "apply-all", "policy0", "powersave", "300000", "1804800", "policy4", "powersave", "710400", "2419200")
    st = parse_state(r.stdout)
    assert r.returncode == 0 and [(p.policy, p.governor) for p in st] == [
        ("policy0", "powersave"),
        ("policy4", "powersave"),
    ]
    assert st[1].min_khz == 710400 and st[1].max_khz == 2419200


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_apply_then_restore_is_byte_identical(tmp_path, trailing_newline):
    sysfs = make_sysfs(tmp_path)
    before = tree_bytes(sysfs)
    snap = tmp_path / "snap.txt"
    text = sh(sysfs, "read").stdout
    snap.write_text(text if trailing_newline else text.rstrip("\n"))  # the last policy must be restored either way
    r = sh(sysfs, "apply", "policy0", "userspace", "300000", "1804800")
    assert r.returncode == 0 and parse_state(r.stdout)[0].governor == "userspace"
    assert sh(sysfs, "setspeed", "policy0", "1017600").returncode == 0
    assert sh(sysfs, "apply", "policy4", "performance", "2016000", "2016000").returncode == 0
    assert tree_bytes(sysfs) != before
    r = sh(sysfs, "restore", str(snap))
    assert r.returncode == 0, r.stderr
    assert tree_bytes(sysfs) == before


def test_guard_restores_on_exit_and_exception(tmp_path):
    sysfs = make_sysfs(tmp_path)
    before = tree_bytes(sysfs)
    dev = LocalDevice(sysfs, tmp_path / "work")
    with GovernorGuard(dev, tmp_path / "results") as g:
        a = g.apply_intent("interactive", "nearest")
        assert (a.resolution.applied, a.resolution.requested) == ("schedutil", "interactive")
        a = g.apply_intent("userspace@1.4GHz")
        assert dict(a.pinned_khz) == {"policy0": 1420800, "policy4": 1401600}
        assert {p.governor for p in a.policies} == {"userspace"}
        assert pending(tmp_path / "results") == ("fake-1",)
    assert tree_bytes(sysfs) == before and pending(tmp_path / "results") == ()

    with pytest.raises(RuntimeError):
        with GovernorGuard(dev, tmp_path / "results") as g:
            g.apply_intent("powersave")
            assert parse_state(sh(sysfs, "read").stdout)[1].governor == "powersave"
            raise RuntimeError("boom")
    assert tree_bytes(sysfs) == before

    n = len(dev.calls)
    with GovernorGuard(dev) as g:  # not offered and fallback "skip": nothing is changed or restored
        assert g.apply_intent("interactive", "skip").resolution.applied is None
    assert [c[0] for c in dev.calls[n:]] == ["available"]


def test_pin_without_userspace_uses_limits(tmp_path):
    sysfs = make_sysfs(tmp_path)
    for p in ("policy0", "policy4"):
        f = sysfs / f"devices/system/cpu/cpufreq/{p}/scaling_available_governors"
        f.write_text("schedutil performance powersave\n")
    before = tree_bytes(sysfs)
    with GovernorGuard(LocalDevice(sysfs, tmp_path / "w")) as g:
        a = g.apply_intent("userspace@2GHz")
        assert a.resolution.applied == "performance"
        assert [(p.min_khz, p.max_khz) for p in a.policies] == [(1804800, 1804800), (2016000, 2016000)]
    assert tree_bytes(sysfs) == before


class UnrootedDevice(LocalDevice):
    def run_script(self, name, *args, root=True):
        if args[0] in ("apply", "apply-all", "setspeed", "restore"):
            raise NotRooted("root required", serial=self.serial)
        return super().run_script(name, *args, root=root)


def test_unrooted_apply_raises_not_rooted(tmp_path):
    sysfs = make_sysfs(tmp_path)
    with pytest.raises(NotRooted):
        with GovernorGuard(UnrootedDevice(sysfs, tmp_path / "w")) as g:
            g.apply_intent("performance")


def test_exit_code_4_maps_to_not_rooted(tmp_path):
    class Refusing(LocalDevice):
        def run_script(self, name, *args, root=True):
            if args[0] in ("apply", "apply-all"):
                return ShellResult("", "governor.sh: cannot write 'performance' (root required?)", 4)
            return super().run_script(name, *args, root=root)

    with pytest.raises(NotRooted, match="root required"):
        with GovernorGuard(Refusing(make_sysfs(tmp_path), tmp_path / "w")) as g:
            g.apply_intent("performance")


CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
    from pathlib import Path
    from test_governor_parse import LocalDevice
    from autlearn.profiler.governor import GovernorGuard
    dev = LocalDevice(Path({sysfs!r}), Path({work!r}))
    with GovernorGuard(dev, {results!r}) as g:
        g.apply_intent("performance")
        print("applied", flush=True)
        os.kill(os.getpid(), getattr(signal, {sig!r}))
        import time; time.sleep(30)
""")


@pytest.mark.parametrize("sig, code", [("SIGTERM", 128 + 15), ("SIGINT", -2), ("SIGKILL", -9)])
def test_signals_restore_and_killed_runs_restore_next_time(tmp_path, sig, code):
    sysfs = make_sysfs(tmp_path)
    before = tree_bytes(sysfs)
    results = tmp_path / "results"
    src = CHILD.format(
        tests=str(ROOT / "tests"),
        root=str(ROOT),
        sysfs=str(sysfs),
        work=str(tmp_path / "w"),
        results=str(results),
        sig=sig,
    )
    p = subprocess.run(
        [sys.executable, "-c", src], capture_output=True, text=True, timeout=60, preexec_fn=default_signals
    )
    assert "applied" in p.stdout, p.stderr
    assert p.returncode == code, p.stderr
    if sig == "SIGKILL":  # nothing ran: the pending snapshot restores on the next run
        assert tree_bytes(sysfs) != before and pending(results) == ("fake-1",)
        report = restore_pending(results, lambda serial: LocalDevice(sysfs, tmp_path / "w", serial))
        assert report == {"fake-1": "restored"}
    else:
        assert "KeyboardInterrupt" in p.stderr if sig == "SIGINT" else True
    assert tree_bytes(sysfs) == before
    assert pending(results) == ()


UNWIND = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {root!r})
    from autlearn.profiler.governor import restore_on_signals
    with restore_on_signals():
        try:
            print("running", flush=True)
            time.sleep(30)
        finally:      # a run unwinding slowly (waiting for its launches to end)
            print("unwinding", flush=True)
            time.sleep(30)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_forces_the_exit(sig):
    p = subprocess.Popen(
        [sys.executable, "-c", UNWIND.format(root=str(ROOT))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    )
    assert p.stdout.readline().strip() == "running"
    p.send_signal(sig)
    assert p.stdout.readline().strip() == "unwinding"
    t0 = time.monotonic()
    p.send_signal(sig)
    p.wait(10)
    assert time.monotonic() - t0 < 5 and p.returncode == 128 + sig
    assert "second signal" in p.stderr.read()


def test_an_ignored_signal_stays_ignored(tmp_path):
    """Started with SIGINT ignored (nohup, a background job): a SIGINT neither restores the governors nor ends the
    run."""
    src = CHILD.format(
        tests=str(ROOT / "tests"),
        root=str(ROOT),
        sysfs=str(make_sysfs(tmp_path)),
        work=str(tmp_path / "w"),
        results=str(tmp_path / "results"),
        sig="SIGINT",
    )
    src = src.replace("import time; time.sleep(30)", "import time; time.sleep(0.3); print('signalled', g.signalled)")
    p = subprocess.run(
        [sys.executable, "-c", src],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert p.returncode == 0 and "signalled False" in p.stdout, p.stdout + p.stderr


def test_restore_pending_keeps_snapshot_when_device_is_gone(tmp_path):
    results = tmp_path / "results"
    (results / "governor-pending").mkdir(parents=True)
    (results / "governor-pending" / "x.json").write_text(
        '{"serial": "x", "snapshot": "policy=policy0\\ngovernor=schedutil\\n"}'
    )

    def gone(serial):
        raise ConnectionError("no such device")

    assert "ConnectionError" in restore_pending(results, gone)["x"]
    assert pending(results) == ("x",)
